"""How many jobs one business may submit a minute.

The workers serve each queue first come, first served: without a limit, one business's burst of bookings (an
import, a runaway integration) would queue in front of every other business's for as long as it takes to run.
Counted in Redis, so that every API process counts together; a minute is a fixed window.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import redis.asyncio as aioredis
from fastapi import HTTPException
from redis.exceptions import RedisError

from core.config import get_settings

log = logging.getLogger(__name__)


class SubmissionCounter:
    def __init__(self, redis_url: str, key_prefix: str, per_minute: int):
        self.redis_url = redis_url
        self.per_minute = per_minute
        self.key_prefix = key_prefix
        self._redis: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aioredis.Redis:
        # An asyncio client's connections belong to the event loop that opened them.
        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            # Short waits: a Redis that does not answer must not hold the request (the job is recorded anyway).
            self._redis = aioredis.Redis.from_url(
                self.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5
            )
            self._loop = loop
        return self._redis

    async def aclose(self) -> None:
        if self._redis is not None and self._loop is asyncio.get_running_loop():
            await self._redis.aclose()
        self._redis = self._loop = None

    async def admit(self, tenant_id: uuid.UUID) -> bool:
        """Counts one submission of the business; False once it is past the minute's limit."""
        key = f"{self.key_prefix}submissions:{tenant_id}:{int(time.time() // 60)}"
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                count, _ = await pipe.incr(key).expire(key, 120).execute()
        except (RedisError, OSError) as error:
            # Open, not closed: while Redis is down bookings are still recorded, and the sweeper sends them on.
            log.warning("could not count the submission of tenant %s (%s); admitted", tenant_id, error)
            return True
        return count <= self.per_minute

    def refusal(self) -> HTTPException:
        """The answer to a submission past the limit: 429 until the minute is over."""
        return HTTPException(
            429,
            f"This business has sent more than {self.per_minute} requests for bookings and changes this"
            " minute; please retry when the minute is over.",
            headers={"Retry-After": str(60 - int(time.time()) % 60)},
        )


def submission_counter() -> SubmissionCounter:
    """One per API process (create_app keeps it in app.state), with the settings of its start."""
    settings = get_settings()
    return SubmissionCounter(settings.redis_url, settings.redis_key_prefix, settings.api_max_jobs_per_minute)
