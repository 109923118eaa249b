"""Settings read from the environment (and a .env file), one place for every knob."""

from functools import lru_cache
from typing import Literal, Self
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AliasChoices,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/voiceappoint"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The API's contract: `?wait=` takes at most this many seconds (below a client's usual 30 s timeout).
WAIT_LIMIT_SECONDS = 20.0


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting's message must not print the values (secrets) around it.
    model_config = SettingsConfigDict(
        env_prefix="VOICEAPPOINT_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL, validation_alias=AliasChoices("DATABASE_URL", "VOICEAPPOINT_DATABASE_URL")
    )
    redis_url: str = Field(
        DEFAULT_REDIS_URL, validation_alias=AliasChoices("REDIS_URL", "VOICEAPPOINT_REDIS_URL")
    )
    # Every Redis key of this deployment (queues, results) starts with it; tests use their own.
    redis_key_prefix: str = ""
    # The role the application acts as (`SET ROLE` on every new connection): it does not own the tables,
    # so row-level security applies to it. Empty: act as the connecting user (no RLS if that is the owner).
    db_app_role: str = "voiceappoint_app"

    # Connections per process (API: one per request in flight; worker: one per pool process). All of them kept
    # by default: an overflow connection is closed as soon as it is given back, so bursts beyond the pool
    # opened and closed connections over and over (each a connect, the role and zone set again, and no
    # prepared statement); 10 + 0 keeps the same ceiling as the 5 + 5 of before.
    db_pool_size: int = 10
    db_max_overflow: int = 0
    db_pool_timeout_seconds: float = 30.0
    db_connect_timeout_seconds: int = 5
    # PostgreSQL refuses a negative value in the connection's options: every connection would fail, which
    # the API answers as 503 database_unavailable, so it is refused here, at start. 0 is PostgreSQL's "off".
    db_statement_timeout_ms: int = Field(30_000, ge=0)
    # How often PostgreSQL checks, while a statement runs, that its client is still there (0: never).
    db_client_check_interval_ms: int = Field(1_000, ge=0)
    # How long PostgreSQL keeps a transaction whose client has sent nothing since its last statement (0: for
    # good). A worker node that stops answering mid-booking (a paused VM, a partition, a host gone without a
    # reset) otherwise keeps the job's row, the allocation and the insert locks for hours. Above the longest
    # pause of a live task between two statements (JobTask.time_limit, 40 s).
    db_idle_in_transaction_timeout_ms: int = Field(60_000, ge=0)

    # Anything else, a typo such as "Production" included, would run with the development secrets and
    # without the production checks of the database login.
    env: Literal["development", "production"] = "development"
    # Not read yet: the accounts' tokens will be signed with it. Production already refuses the default.
    secret_key: str = "dev-secret-change-me"
    public_url: str = "http://127.0.0.1:8000"
    # The names uvicorn and Celery both accept (upper case for Celery, lower case for uvicorn).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # Booking
    # Out of range, every availability query of a business without its own step answered 500.
    default_slot_step_minutes: int = Field(15, ge=1, le=1440)
    # Below 1, every availability query and appointments listing answered 422 range_too_long.
    max_availability_days: int = Field(62, ge=1)
    # Holds `?wait=` requests for less than the contract's limit (behind a proxy that gives up sooner).
    booking_wait_max_seconds: float = Field(WAIT_LIMIT_SECONDS, gt=0, le=WAIT_LIMIT_SECONDS)
    # Requests held by ?wait= share one poll of their jobs per API process, this often; past this many
    # held at once, a request is answered without waiting (202 while its job runs).
    booking_wait_poll_seconds: float = 0.05
    booking_wait_max_requests: int = 1000
    # Requests queued for one of the API process's worker threads (database work runs there); past this
    # many, a new request is answered 503 at once instead of queueing behind them.
    # Below 1, every request of an idle process was answered 503 overloaded.
    api_max_queued_requests: int = Field(1000, gt=0)
    # Requests one API key may have in progress in one API process; past it, 429 too_many_requests.
    api_max_requests_per_key: int = Field(200, gt=0)
    # Bookings, moves and cancellations one business may submit a minute (all API processes together).
    api_max_jobs_per_minute: int = Field(600, gt=0)
    intake_sweep_after_seconds: int = 60

    stripe_api_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""
    sendgrid_api_key: str = ""
    sendgrid_api_base: str = ""
    sendgrid_webhook_public_key: str = ""
    email_from: str = "bookings@voiceappoint.local"
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_api_base: str = ""
    sms_from: str = ""
    vapi_secret: str = ""
    vapi_api_key: str = ""
    vapi_api_base: str = ""
    flower_user: str = "admin"
    flower_password: str = "admin"

    @field_validator("database_url")
    @classmethod
    def _a_psycopg_url(cls, value: str) -> str:
        # Checked at start rather than on the first connection: a malformed URL made the API answer 500 to
        # every request and the workers drop every job they took.
        return psycopg_url(value)

    @field_validator("redis_url")
    @classmethod
    def _a_redis_url(cls, value: str) -> str:
        # A malformed URL stopped the workers, Beat and Flower with a traceback and made the API answer 500
        # to every booking (before its job was recorded).
        redis_url_parts(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_in_capitals(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("flower_user", "flower_password")
    @classmethod
    def _one_flower_credential(cls, value: str, info: ValidationInfo) -> str:
        # Flower reads FLOWER_BASIC_AUTH as a comma-separated list of user:password pairs: a comma in either
        # made two credentials, neither of them the one set, one of them a fragment with no user name.
        forbidden = ",:" if info.field_name == "flower_user" else ","
        if any(character in value for character in forbidden):
            name = f"VOICEAPPOINT_{(info.field_name or '').upper()}"
            raise ValueError(
                f"{name} may not contain {' or '.join(repr(c) for c in forbidden)} (Flower splits on it)"
            )
        return value

    @model_validator(mode="after")
    def _production_has_secrets(self) -> Self:
        if self.env == "production":
            weak = [
                name
                for name, value, default in (
                    ("VOICEAPPOINT_SECRET_KEY", self.secret_key, "dev-secret-change-me"),
                    ("VOICEAPPOINT_FLOWER_PASSWORD", self.flower_password, "admin"),
                )
                if value == default or not value
            ]
            if weak:
                raise ValueError(f"in production set {', '.join(weak)} (the development defaults are public)")
            if not self.db_app_role:
                raise ValueError(
                    "in production set VOICEAPPOINT_DB_APP_ROLE: without it no tenant is kept apart"
                )
        return self

    @property
    def is_production(self) -> bool:
        return self.env == "production"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def psycopg_url(value: str) -> str:
    """DATABASE_URL with the psycopg 3 driver (`postgresql://` and `postgres://`, what most tools print, mean
    it here, not SQLAlchemy's default psycopg2, which is not installed). ValueError if it is not a PostgreSQL
    URL we can use, saying why."""
    try:
        url = make_url(value)
        url.port  # noqa: B018 - parsing the port is what raises on 'host:abc'
    except (ArgumentError, ValueError):
        raise ValueError(
            "is not a valid URL; expected postgresql+psycopg://USER[:PASSWORD]@HOST:PORT/DATABASE"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise ValueError(f"must be a PostgreSQL URL (postgresql+psycopg://...), not '{url.drivername}://...'")
    if driver not in ("", "psycopg"):
        raise ValueError(f"uses the driver '{driver}'; this project uses psycopg 3: postgresql+psycopg://...")
    if not url.database:
        raise ValueError("names no database; expected postgresql+psycopg://USER@HOST:PORT/DATABASE")
    # The rest as written: a rendered URL would percent-encode a socket directory's slashes.
    return "postgresql+psycopg" + value[value.index("://") :]


def redis_url_parts(value: str) -> SplitResult:
    """REDIS_URL's parts; ValueError if it is not a Redis URL we can use, saying why."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError("is not a valid URL; expected redis://HOST:PORT/DB") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        shown = f"'{parts.scheme}://...'" if parts.scheme else "not a URL"
        raise ValueError(f"must be a Redis URL (redis://HOST:PORT/DB), {shown}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("names no host; expected redis://HOST:PORT/DB")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("names no socket; expected unix:///path/to/redis.sock")
    return parts


def variable_of(location: tuple) -> str:
    """The environment variable behind a settings field (what the operator has to fix)."""
    field = str(location[0])
    if field.lower() in ("database_url", "redis_url"):
        return field.upper()
    return f"VOICEAPPOINT_{field.upper()}"


def _reason(message: str) -> str:
    # A validator's ValueError reaches pydantic's message as "Value error, <its text>".
    return message.removeprefix("Value error, ")


def describe(error: ValidationError) -> str:
    """A refused configuration in one line, naming each variable (never its value: hide_input_in_errors)."""
    # A rule over several settings (production secrets) has no location; its message names them.
    problems = "; ".join(
        f"{variable_of(problem['loc'])}: {_reason(problem['msg'])}"
        if problem["loc"]
        else _reason(problem["msg"])
        for problem in error.errors()
    )
    return " ".join(f"bad configuration: {problems}".split())
