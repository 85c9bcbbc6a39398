"""What a worker's HTTP and gRPC fronts share: the limits, the health, the body budget, the catalog of the served
models (replaced whenever the main process sends a new one) and the supervisor (the worker's proxy of the main
process's). One FrontState per worker, read by both fronts through their base class Front."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .budget import BodyBudget
from .catalog import Catalog
from .health import Health
from .settings import Limits


@dataclass
class FrontState:
    limits: Limits
    health: Health
    budget: BodyBudget
    catalog: Catalog
    supervisor: Any = None  # generation, healed_since(), poke(): set by the worker


class Front:
    """The base of HttpFront and GrpcFront: their shared state, by name."""

    def __init__(self, state: FrontState) -> None:
        self.state = state

    @property
    def limits(self) -> Limits:
        return self.state.limits

    @property
    def health(self) -> Health:
        return self.state.health

    @property
    def budget(self) -> BodyBudget:
        return self.state.budget

    @property
    def catalog(self) -> Catalog:
        return self.state.catalog

    @property
    def supervisor(self) -> Any:
        return self.state.supervisor
