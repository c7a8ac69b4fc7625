"""Which of a request's adapters act at a sampling step: Stability's per-adapter sigma interval.

Stability's `DiffusionTransformer.forward(..., lora_configs=[{"lora_index", "interval", "layer_filter"}])` (@ 636f906)
enables adapter i for a call when `interval[0] <= sigma[0] <= interval[1]` and disables it otherwise, sigma being
the timestep the DiT was given, in float32 (the comparison casts the interval's bounds to float32); an enabled
adapter is then filtered layer by layer (`PlanEntry.layer_filter`). The conditioner's adapter layers sit outside
the DiT: neither control reaches them, and they act at the conditioner strength once per request.

A disabled adapter passes the weight through, so at each step the DiT runs the chain of the adapters active then,
in request order. Sigma falls monotonically over a request's steps, so each adapter is active over one run of
consecutive steps and the active set changes only a few times: the plan is looked up (or made) only then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .plans import PlanEntry, SetPlan, as_float32

if TYPE_CHECKING:
    from .store import AdapterRegistry


class RequestAdapters:
    """One request's adapters for all its steps: the conditioner's plan, and the DiT's plan at a step's sigma."""

    def __init__(
        self, registry: AdapterRegistry, entries: Sequence[PlanEntry], intervals: Sequence[tuple[float, float]]
    ) -> None:
        self._registry = registry
        self.entries = tuple(entries)
        self.intervals = tuple((as_float32(lo), as_float32(hi)) for lo, hi in intervals)
        self.conditioner: SetPlan = registry.plan_of(self.entries, stepwise=False)
        self._last: tuple[tuple[bool, ...], SetPlan | None] | None = None

    def active(self, sigma: float) -> tuple[bool, ...]:
        """Which adapters are enabled at `sigma` (a float32 value: the step's timestep as the DiT reads it)."""
        return tuple(lo <= sigma <= hi for lo, hi in self.intervals)

    def at(self, sigma: float) -> SetPlan | None:
        """The DiT's plan at `sigma`: the chain of the adapters active there (None when none is). The same object
        while the active set stays the same, so what a request computed once per plan can be kept until then."""
        mask = self.active(sigma)
        if self._last is not None and self._last[0] == mask:
            return self._last[1]
        live = [e for e, on in zip(self.entries, mask, strict=True) if on]
        plan = self._registry.plan_of(live, stepwise=True) if live else None
        self._last = (mask, plan)
        return plan
