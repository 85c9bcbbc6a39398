"""The server's state as clients should see it: ready only when Triton is ready, the supervisor has every backend
process alive and the last end-to-end probe answered, and the server is not draining."""
from __future__ import annotations

import asyncio
import enum
import logging

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
