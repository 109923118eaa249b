# One image for every process (api, worker, beat, flower, migrate); the command picks the process.
# Untested here: the machines this project is built on have no Docker engine.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VOICEAPPOINT_DATA_DIR=/app/.data

WORKDIR /app
COPY pyproject.toml beat_schedule.py ./
COPY api ./api
COPY core ./core
COPY tasks ./tasks
COPY workers ./workers
COPY ops ./ops
COPY migrations ./migrations

# Editable, so the migrations are found next to the code (ops/database.py looks for ../migrations).
# With the versions the tests last passed with (ops/constraints.txt).
RUN pip install -c ops/constraints.txt -e . \
    && useradd --create-home --uid 10001 voiceappoint \
    && mkdir -p /app/.data \
    && chown voiceappoint /app/.data

USER voiceappoint
EXPOSE 8000 5555
CMD ["voiceappoint", "api", "--host", "0.0.0.0", "--port", "8000"]
