"""Applying plans to the rows of one forward pass, through forward hooks on the targeted modules.

The base weights are never changed: the unmodified module computes its output for the whole batch, and the hook
then turns each request's rows into that request's adapted output (`LayerPlan.apply`). Rows without a plan are
never touched (bitwise the base output), and a request's term is computed on its own rows only, so a request's
numbers do not depend on its batch mates (S-LoRA / Punica's segmented LoRA).

The model's forward is given the rows' plans as an argument (`RowPlans`) and binds them for the duration of the
call (`applied`); the hooks read what is bound. The binding is per thread, so two threads' forwards on one model
never see each other's rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .plans import SetPlan
from .targets import Target


@dataclass(frozen=True)
class RowPlans:
    """Which plan applies to which rows `[start, stop)` of a batch: what a forward is given. Only segments with
    something to apply are kept; `AdapterHooks.rows` returns None when nothing is."""

    hooks: AdapterHooks
    segments: tuple[tuple[int, int, SetPlan], ...]


class AdapterHooks:
    """A forward hook on every target; each is a no-op unless row plans are bound (`applied`)."""

    def __init__(self, targets: dict[str, Target]) -> None:
        self._bound = threading.local()
        self._handles = [t.module.register_forward_hook(self._hook(name)) for name, t in targets.items()]

    def rows(self, segments: Sequence[tuple[int, int, SetPlan | None]]) -> RowPlans | None:
        """The plans of a batch's rows, for a forward to apply; None when no segment has anything to apply."""
        live = tuple((a, b, p) for a, b, p in segments if p is not None and p.layers)
        return RowPlans(self, live) if live else None

    @contextmanager
    def bound(self, plans: RowPlans) -> Iterator[None]:
        """While inside (on this thread), hooked modules apply each plan to its rows of the batch dimension."""
        if plans.hooks is not self:
            raise ValueError("these row plans were made for another model's adapters")
        before = getattr(self._bound, "state", None)
        self._bound.state = (plans.segments, None)
        try:
            yield
        finally:
            self._bound.state = before

    @contextmanager
    def window(self, start: int, stop: int) -> Iterator[None]:
        """The modules called inside see only rows `[start, stop)` of the bound batch (a forward that projects its
        per-request vectors request by request)."""
        state = getattr(self._bound, "state", None)
        if state is None:
            yield
            return
        self._bound.state = (state[0], (start, stop))
        try:
            yield
        finally:
            self._bound.state = state

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            state = getattr(self._bound, "state", None)
            if state is None:
                return None
            segments, window = state
            x = args[0]
            lo, hi = window or (0, x.shape[0])
            if hi - lo != x.shape[0]:
                raise RuntimeError(f"adapter rows of {name}: {x.shape[0]} rows where {hi - lo} were announced")
            for start, stop, plan in segments:
                layer = plan.layers.get(name)
                a, b = max(start, lo) - lo, min(stop, hi) - lo
                if layer is None or b <= a:
                    continue
                layer.apply(module, x[a:b], output[a:b])
            return output

        return hook

    def remove(self) -> None:
        """Take the hooks off the modules (the model then runs as if it had no adapter support)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def install(self, targets: dict[str, Target]) -> None:
        """Put the hooks back on after `remove` (benchmarks compare a model with and without them)."""
        if not self._handles:
            self._handles = [t.module.register_forward_hook(self._hook(name)) for name, t in targets.items()]


def applied(plans: RowPlans | None) -> AbstractContextManager[None]:
    """What a forward wraps its computation in: the rows' plans bound, or nothing when there are none."""
    return nullcontext() if plans is None else plans.hooks.bound(plans)


def window(plans: RowPlans | None, start: int, stop: int) -> AbstractContextManager[None]:
    """What a forward wraps a per-request projection of rows `[start, stop)` in (nothing without plans)."""
    return nullcontext() if plans is None else plans.hooks.window(start, stop)
