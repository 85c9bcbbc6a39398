"""The supervisor: arms once Triton is ready, then watches every backend stub process (once a second) and the
pipeline end to end (a probe text through every ensemble every few seconds). A dead stub's model is reloaded in
place (unload, load: model control is explicit and only the supervisor holds a way to use it); the other models
keep their state. When it cannot heal the server (a reload fails, probes keep failing with every process alive,
too many recoveries) it asks the gateway to exit non-zero, so that a restart policy brings a fresh server."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from . import probe, processes
from .catalog import Catalog
from .health import Health, Phase, healed_since
from .settings import SupervisorSettings
from .tritonserver import TritonProcess
from .upstream import Upstream

log = logging.getLogger("tritoned.supervisor")


class Fatal(Exception):
    """The server cannot be healed in place."""


class Supervisor:
    def __init__(self, settings: SupervisorSettings, triton: TritonProcess, upstream: Upstream, health: Health,
                 on_catalog: Callable[[Catalog], Awaitable[None]]) -> None:
        self.settings = settings
        self.triton = triton
        self.upstream = upstream
        self.health = health
        self.on_catalog = on_catalog
        self.catalog: Catalog | None = None
        self.watched: dict[str, processes.Stub] = {}  # instance -> stub
        self.recoveries: list[float] = []
        self.generation = 0  # recoveries started so far
        self.probe_failures = 0
        self._poke = asyncio.Event()
        self.events: list[dict[str, object]] = []  # what happened, for the log and tests

    def poke(self) -> None:
        """Check the backend processes now (a request just failed the way a dead stub makes it fail)."""
        self._poke.set()

    async def run(self) -> None:
        """Until cancelled; raises Fatal when the server must exit non-zero."""
        await self._arm()
        next_probe = time.monotonic() + self.settings.probe_interval_s
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), self.settings.watch_interval_s)
            except asyncio.TimeoutError:
                pass
            self._poke.clear()
            dead = [stub for stub in self.watched.values() if not processes.alive(stub)]
            if dead:
                await self._recover(dead)
                next_probe = time.monotonic() + self.settings.probe_interval_s
                continue
            if time.monotonic() >= next_probe:
                await self._check_probe()
                next_probe = time.monotonic() + self.settings.probe_interval_s

    async def healed_since(self, generation: int, timeout: float) -> bool:
        """See health.healed_since: True when the request that failed is worth sending once more."""
        return await healed_since(self, self.health, generation, timeout)

    # ---------------------------------------------------------------------------------------------- arming

    async def _arm(self) -> None:
        while True:
            live = await self.upstream.status("/v2/health/live") == 200
            self.health.triton_live = live
            if live and await self.upstream.status("/v2/health/ready") == 200:
                break
            if live:
                self.health.set(Phase.UP, "tritonserver is up but not ready (a model failed to load?)")
            await asyncio.sleep(0.5)
        self.catalog = await self.upstream.catalog()
        await self.on_catalog(self.catalog)  # the gateway opens its gRPC port with the models' limits
        self._watch_all()
        problem = await self._probe_all()
        if problem:
            self.health.set(Phase.PROBE_FAILING, problem)
            self.probe_failures = 1
        else:
            self.health.set(Phase.READY)
        log.info("watching %d backend process(es): %s; probing %s every %gs", len(self.watched),
                 ", ".join(f"{s.instance} (pid {s.pid})" for s in self.watched.values()) or "none (in-process backends)",
                 ", ".join(m.name for m in self.catalog.ensembles) or "no ensemble", self.settings.probe_interval_s)

    def _watch_all(self) -> None:
        assert self.catalog is not None
        self.watched = {s.instance: s for s in processes.stubs(self.triton.pid, self.catalog.models)}

    # ---------------------------------------------------------------------------------------------- probing

    async def _probe_all(self) -> str | None:
        """None when every ensemble answers the probe text with a label; else what went wrong."""
        assert self.catalog is not None
        for model in self.catalog.ensembles:
            body = probe.request_body(model.metadata, self.settings.probe_text)
            if body is None:
                continue
            try:
                status, answer = await self.upstream.infer(model.name, body, self.settings.probe_timeout_s)
            except asyncio.TimeoutError:
                return f"probe of {model.name} timed out after {self.settings.probe_timeout_s:g}s"
            except Exception as error:  # connection refused, reset...
                return f"probe of {model.name} failed: {error!r}"
            problem = probe.answer_problem(model.metadata, status, answer)
            if problem:
                return f"probe of {model.name}: {problem}"
        return None

    async def _check_probe(self) -> None:
        problem = await self._probe_all()
        if problem is None:
            if self.probe_failures:
                log.info("end-to-end probe answers again")
            self.probe_failures = 0
            if self.health.phase is Phase.PROBE_FAILING:
                self.health.set(Phase.READY)
            return
        self.probe_failures += 1
        log.error("end-to-end probe failed (%d of %d): %s", self.probe_failures, self.settings.probe_failures,
                  problem)
        dead = [stub for stub in self.watched.values() if not processes.alive(stub)]
        if dead:
            await self._recover(dead)
            return
        self.health.set(Phase.PROBE_FAILING, problem)
        if self.probe_failures >= self.settings.probe_failures:
            raise Fatal(f"the pipeline failed {self.probe_failures} probes in a row with every backend process "
                        f"alive ({problem})")

    # ---------------------------------------------------------------------------------------------- recovery

    async def _recover(self, dead: list[processes.Stub]) -> None:
        now = time.monotonic()
        self.recoveries = [t for t in self.recoveries if now - t < self.settings.recovery_window_s] + [now]
        self.generation += 1
        models = sorted({stub.model for stub in dead})
        described = ", ".join(f"{s.instance} (pid {s.pid})" for s in dead)
        log.error("backend process(es) died: %s; reloading model(s) %s", described, ", ".join(models))
        if len(self.recoveries) > self.settings.max_recoveries:
            raise Fatal(f"{len(self.recoveries)} recoveries within {self.settings.recovery_window_s:g}s "
                        f"(limit {self.settings.max_recoveries}): backend processes keep dying")
        self.health.set(Phase.RECOVERING, f"backend process of {described} died; reloading {', '.join(models)}")
        event: dict[str, object] = {"instances": [s.instance for s in dead], "models": models}
        try:
            lingering = await asyncio.wait_for(self._reload(models), self.settings.recovery_timeout_s)
        except asyncio.TimeoutError:
            raise Fatal(f"reloading {', '.join(models)} took longer than {self.settings.recovery_timeout_s:g}s") \
                from None
        except Exception as error:
            raise Fatal(f"reloading {', '.join(models)} failed: {error}") from None
        for stub in lingering:  # the old version's surviving instances: they serve nothing any more
            processes.kill(stub)
        if lingering:
            log.info("stopped the old version's remaining backend process(es): %s",
                     ", ".join(f"{s.instance} (pid {s.pid})" for s in lingering))
        await asyncio.sleep(0.1)
        removed = [s.shm_region for s in [*dead, *lingering] if processes.remove_shm_region(s)]
        problem = await self._probe_all()
        if problem:
            raise Fatal(f"after reloading {', '.join(models)} the pipeline still fails: {problem}")
        self.probe_failures = 0
        took = time.monotonic() - now
        event["seconds"] = round(took, 3)
        self.events.append(event)
        self.health.set(Phase.READY)
        log.warning("recovered in %.2fs: reloaded %s; now watching %s%s", took, ", ".join(models),
                    ", ".join(f"{s.instance} (pid {s.pid})" for s in self.watched.values()),
                    f"; removed the dead processes' shared memory {removed}" if removed else "")

    async def _reload(self, models: list[str]) -> list[processes.Stub]:
        """Unload and load `models`; returns the backend processes of their old versions that were still alive
        (Triton 2.51 never finishes unloading a version whose stub was killed, and keeps its other instances'
        processes running: the caller stops them)."""
        assert self.catalog is not None
        previous = processes.stubs(self.triton.pid, self.catalog.models)
        before = await self.upstream.index()
        counts = {model: sum(1 for s in self.watched.values() if s.model == model) for model in models}
        for model in models:
            await self.upstream.admin_post(f"/v2/repository/models/{model}/unload")
            await self.upstream.admin_post(f"/v2/repository/models/{model}/load")
        # Unloading a composing model unloads its ensembles; loading it normally brings them back: make sure.
        after = await self.upstream.index()
        for name, state in before.items():
            if state == "READY" and after.get(name) != "READY":
                await self.upstream.admin_post(f"/v2/repository/models/{name}/load")
        # The old processes of a reloaded model may linger: the new ones are those that did not exist before.
        old = {(s.pid, s.start_time) for s in previous}
        deadline = time.monotonic() + 10
        while True:
            fresh = processes.stubs(self.triton.pid, self.catalog.models)
            new = {model: [s for s in fresh if s.model == model and (s.pid, s.start_time) not in old]
                   for model in models}
            if all(len(new[model]) >= counts[model] for model in models) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        for model in models:
            if len(new[model]) != counts[model]:
                raise RuntimeError(f"{model}: {len(new[model])} new backend process(es) after reloading, expected "
                                   f"{counts[model]}")
        self.watched = {instance: stub for instance, stub in self.watched.items() if stub.model not in models}
        self.watched.update({s.instance: s for model in models for s in new[model]})
        return [s for s in previous if s.model in models and processes.alive(s)]
