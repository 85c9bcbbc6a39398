"""How many bytes of request bodies the gateway holds at once. Every inference request takes its size from one
budget, shared by the HTTP and the gRPC port, for as long as it is being handled; a large request that does not
fit waits, first come first served, until earlier ones are answered, and gets 503 / UNAVAILABLE when the wait
outlasts its timeout. A burst of the largest requests is so served a few at a time instead of growing the
gateway until the kernel's OOM killer takes the whole server down. Small requests (the everyday traffic) are
counted but never wait: a slow or stalled large upload delays only other large ones."""
from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator

from .checks import Rejected


class BodyBudget:
    def __init__(self, capacity: int, small: int) -> None:
        self.capacity = capacity
        self.small = small  # a request of at most this many bytes never waits
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def hold(self, size: int, timeout: float) -> AsyncIterator[None]:
        """Hold `size` bytes (at most the whole budget: a request larger than it runs alone) while the block runs."""
        size = max(1, min(size, self.capacity))
        if size <= self.small or not self._waiting and self.used + size <= self.capacity:
            self.used += size
        else:
            await self._wait(size, timeout)
        try:
            yield
        finally:
            self._release(size)

    async def _wait(self, size: int, timeout: float) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(granted), timeout)
        except BaseException as stopped:
            if granted.done() and not granted.cancelled():
                self._release(size)  # granted just as the wait ended
            else:
                granted.cancel()
                self._waiting.remove(entry)
                self._grant()  # the queue's head may have changed
            if isinstance(stopped, asyncio.TimeoutError):
                raise Rejected(503, "UNAVAILABLE",
                               f"server busy: {self.used >> 20} MiB of request bodies in flight (the limit, "
                               f"TRITONED_MAX_BYTES_IN_FLIGHT, is {self.capacity >> 20} MiB) for {timeout:g}s; "
                               "retry later") from None
            raise

    def _release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.capacity:
            size, granted = self._waiting.popleft()
            self.used += size
            granted.set_result(None)
