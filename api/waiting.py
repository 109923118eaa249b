"""Requests held by `?wait=` until their job ends.

One poller per API process asks the database, for all held requests at once, which of their jobs have
ended: a burst of held requests costs one query per tick, not one per request per tick (hundreds of
requests each polling on their own took more of the process than the bookings they waited for).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor

from core import intake
from core.db import UnitOfWork

log = logging.getLogger(__name__)


class JobWaiter:
    def __init__(self, interval_seconds: float, max_waiting: int):
        self.interval_seconds = interval_seconds
        self.max_waiting = max_waiting
        self._waiting: dict[uuid.UUID, list[asyncio.Future[None]]] = {}
        self._poller: asyncio.Task[None] | None = None
        # A thread of its own: neither the request threads nor the loop's shared ones, which others may fill.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-waiter")
        self._failing = False

    @property
    def waiting(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

    async def until_ended(self, job_id: uuid.UUID, timeout: float) -> bool:
        """True once the job has ended; False when `timeout` runs out first, or at once when too many
        requests are held already (the caller then answers without waiting)."""
        if timeout <= 0 or self.waiting >= self.max_waiting:
            return False
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        self._waiting.setdefault(job_id, []).append(ended)
        # A poller of a loop that has ended (an app served by a second loop, as tests do) never wakes anyone.
        if self._poller is None or self._poller.done() or self._poller.get_loop() is not loop:
            self._poller = loop.create_task(self._poll())
        try:
            await asyncio.wait_for(ended, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            futures = self._waiting.get(job_id, [])
            if ended in futures:
                futures.remove(ended)
            if not futures:
                self._waiting.pop(job_id, None)

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(self.interval_seconds)
            job_ids = list(self._waiting)
            if not job_ids:
                break
            try:
                ended = await asyncio.get_running_loop().run_in_executor(self._thread, _ended, job_ids)
            except Exception:
                # Once per outage, not at every tick.
                if not self._failing:
                    log.exception("could not read the state of %d held jobs; trying again", len(job_ids))
                self._failing = True
                continue
            if self._failing:
                log.info("reading the state of held jobs again")
                self._failing = False
            for job_id in ended:
                for future in self._waiting.pop(job_id, []):
                    if not future.done():
                        future.set_result(None)


def _ended(job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    # System mode: the held requests belong to any number of businesses; only ids and states are read.
    with UnitOfWork(system=True, read_only=True) as uow:
        return intake.ended_among(uow, job_ids)
