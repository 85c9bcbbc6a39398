"""What the gateway knows of the served models, read from Triton itself (metadata and configuration): the size
limit of each model's requests, which outputs are strings (no top-k there), the ensembles (probed end to end), and
each model's backend instances (watched by the supervisor).

Body limits come from the models clients call with text, the ensembles (their max_batch_size and text inputs): an
internal model (model_onnx, whose max_batch_size is the dynamic batcher's, far above the clients') is never allowed
a larger body than the largest ensemble's, and the gRPC port's message size follows the same limit. A repository
without an ensemble limits each model by its own max_batch_size."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .probe import STRING_DATATYPE
from .settings import Limits


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Model:
    name: str
    platform: str  # "ensemble", or the backend ("python", "onnxruntime", ...)
    max_batch_size: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_ensemble(self) -> bool:
        return self.platform == "ensemble"

    @property
    def string_outputs(self) -> frozenset[str]:
        return frozenset(t.name for t in self.outputs if t.datatype == STRING_DATATYPE)

    @property
    def texts_per_row(self) -> int:
        return sum(1 for t in self.inputs if t.datatype == STRING_DATATYPE)

    @classmethod
    def from_triton(cls, metadata: dict[str, Any], config: dict[str, Any]) -> "Model":
        def tensors(items: list[dict[str, Any]]) -> tuple[Tensor, ...]:
            return tuple(Tensor(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t.get("shape", [])))
                         for t in items)
        platform = str(config.get("platform") or config.get("backend") or metadata.get("platform") or "")
        return cls(name=str(metadata["name"]), platform=platform,
                   max_batch_size=int(config.get("max_batch_size", 0) or 0),
                   inputs=tensors(metadata.get("inputs", [])), outputs=tensors(metadata.get("outputs", [])),
                   metadata=metadata)


@dataclass(frozen=True)
class Catalog:
    models: dict[str, Model]
    limits: Limits

    def get(self, name: str) -> Model | None:
        return self.models.get(name)

    def _own_limit(self, model: Model) -> int:
        return self.limits.body_limit(model.max_batch_size, model.texts_per_row)

    def body_limit(self, name: str | None) -> int:
        """Largest inference body for model `name`: an ensemble's own; any other model's own but at most the
        largest ensemble's (see the module's doc); an unknown model gets the smallest (Triton will refuse it)."""
        model = self.models.get(name or "")
        if model is None:
            return self.limits.body_limit(1, 1)
        own = self._own_limit(model)
        return own if model.is_ensemble else min(own, self.largest_body_limit())

    def largest_body_limit(self) -> int:
        """The largest body any model is allowed (the gRPC port's message size): the largest ensemble's, or where
        there is no ensemble, the largest model's."""
        clients = self.ensembles or list(self.models.values())
        return max([self.limits.body_limit(1, 1)] + [self._own_limit(model) for model in clients])

    @property
    def ensembles(self) -> list[Model]:
        return [model for name, model in sorted(self.models.items()) if model.is_ensemble]

    def describe_limits(self) -> str:
        parts = [f"{name} {self.body_limit(name) / (1 << 20):.1f} MiB" for name in sorted(self.models)]
        return (f"body limits: {', '.join(parts) or 'none'}; other requests "
                f"{self.limits.body_overhead_bytes / (1 << 20):.1f} MiB; JSON depth {self.limits.max_json_depth}")
