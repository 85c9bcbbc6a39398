"""The server's state as clients should see it: ready only when Triton is ready, the supervisor has every backend
process alive and the last end-to-end probe answered, and the server is not draining."""
from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any, Callable

log = logging.getLogger("tritoned.health")


class Phase(enum.Enum):
    STARTING = "starting"  # Triton not answering yet
    UP = "up, not ready"  # Triton answers but is not ready (or the first probe has not passed)
    READY = "ready"
    PROBE_FAILING = "failing the end-to-end probe"
    RECOVERING = "recovering"  # a model whose backend process died is being reloaded: inference waits
    DRAINING = "draining"
    STOPPING = "stopping"


class Health:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.reason = "tritonserver is starting"
        self._not_recovering = asyncio.Event()
        self._not_recovering.set()
        self.triton_live = False
        self.listeners: list[Callable[[Phase, str], None]] = []  # told of every change (the worker processes)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def ending(self) -> bool:
        return self.phase in (Phase.DRAINING, Phase.STOPPING)

    def set(self, phase: Phase, reason: str = "") -> None:
        if self.ending and phase not in (Phase.DRAINING, Phase.STOPPING):
            return  # draining is final
        if phase is not self.phase:
            log.info("state: %s%s", phase.value, f" ({reason})" if reason else "")
        self.mirror(phase, reason)
        for listener in self.listeners:
            listener(self.phase, self.reason)

    def mirror(self, phase: Phase, reason: str) -> None:
        """Take the state another process decided (a worker mirrors the supervisor's), without logging it."""
        self.phase = phase
        self.reason = reason or phase.value
        if phase is Phase.RECOVERING:
            self._not_recovering.clear()
        else:
            self._not_recovering.set()

    def describe(self) -> str:
        return self.phase.value if self.reason == self.phase.value else f"{self.phase.value}: {self.reason}"

    async def wait_not_recovering(self, timeout: float) -> None:
        """Returns at once unless a recovery runs; then when it ends or after `timeout` seconds."""
        if self._not_recovering.is_set():
            return
        try:
            await asyncio.wait_for(self._not_recovering.wait(), timeout)
        except asyncio.TimeoutError:
            pass


async def healed_since(supervisor: Any, health: Health, generation: int, timeout: float) -> bool:
    """After a request failed the way a dead backend process makes requests fail: have `supervisor` (the
    supervisor, or a worker's link to it: `poke()` and `generation`) check the processes now and wait for the
    recovery, if one starts. True when a recovery started after `generation` (taken before the request was sent)
    and the server is ready again: the request is worth sending once more."""
    deadline = time.monotonic() + timeout
    supervisor.poke()
    for _ in range(20):  # the watch loop (in a worker: the main process's answer) runs within this second
        if supervisor.generation > generation:
            break
        await asyncio.sleep(0.05)
    await health.wait_not_recovering(max(0.0, deadline - time.monotonic()))
    return supervisor.generation > generation and health.phase is Phase.READY
