"""Per-request adapters (LoRA and its relatives, in Stability's file format) for any model family.

A family supplies only its target map (which `nn.Linear` / `nn.Conv1d` modules an adapter may act on, under the
names adapter files use); everything else is here, one job per module:

* `targets`: the `Target` record and `collect_targets`, which a family's map is built with;
* `files`: the file format, include/exclude filters, and checking a file against the targets (`inspect_adapter`);
* `plans`: the maths: loading a file, Stability's exact weight chain, and the per-module plan of an adapter set
  that a shared forward can apply row by row;
* `schedule`: which of a request's adapters act at a sampling step (Stability's per-adapter sigma interval);
* `hooks`: forward hooks that apply each request's plan to its own rows of a batch (`RowPlans`, given to the
  model's forward as an argument);
* `store`: the directory's registry (scan, LRU-cached loads and plans) and `Adapters`, what a model holds.
"""

from __future__ import annotations

from .files import (
    MAX_FILTER_EXPANSION,
    MIB,
    AdapterError,
    AdapterInfo,
    LayerFilterError,
    check_layer_filter,
    inspect_adapter,
)
from .hooks import AdapterHooks, RowPlans, applied, window
from .plans import LayerPlan, LoadedAdapter, PlanEntry, SetPlan, official_weight, strength_coefficient
from .schedule import RequestAdapters
from .store import AdapterRegistry, Adapters
from .targets import Target, collect_targets

__all__ = [
    "MAX_FILTER_EXPANSION",
    "MIB",
    "AdapterError",
    "AdapterHooks",
    "AdapterInfo",
    "AdapterRegistry",
    "Adapters",
    "LayerFilterError",
    "LayerPlan",
    "LoadedAdapter",
    "PlanEntry",
    "RequestAdapters",
    "RowPlans",
    "SetPlan",
    "Target",
    "applied",
    "check_layer_filter",
    "collect_targets",
    "inspect_adapter",
    "official_weight",
    "strength_coefficient",
    "window",
]
