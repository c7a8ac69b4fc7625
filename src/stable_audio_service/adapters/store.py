"""The adapters of one directory for one loaded base model: scanning, loading, planning, and what the model and
the request path use (`Adapters`).

Files are found in one directory (name = file stem), checked against the base's targets when the directory is
scanned (never per request), loaded on first use into an LRU cache bounded in bytes, and never written into the
base weights. The cache also holds each adapter set's plan, keyed by the file versions it was made from, so a file
changed on disk is never served from a stale plan.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..models.base import LoraRef, LRUCache
from .files import (
    FILE_SUFFIXES,
    MIB,
    AdapterError,
    AdapterInfo,
    LayerFilterError,
    check_layer_filter,
    expand_layer_filter,
    inspect_adapter,
)
from .hooks import AdapterHooks, RowPlans
from .plans import LoadedAdapter, PlanEntry, SetPlan, as_float32, build_plan, load_adapter
from .schedule import RequestAdapters
from .targets import Target

log = logging.getLogger("stable_audio_service.adapters")


def _versions(key: Any) -> list[tuple[str, int, int]]:
    """The adapter file versions a cache key depends on."""
    if key[0] == "adapter":
        return [key[1]]
    return [version for version, *_ in key[2]]


class AdapterRegistry:
    """The adapters of one directory for one loaded base model; thread-safe (HTTP threads list and check, the
    engine's worker loads and plans)."""

    def __init__(
        self,
        directory: Path,
        targets: dict[str, Target],
        *,
        cache_bytes: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        self.directory = Path(directory)
        self.targets = targets
        self.device = device
        self.dtype = dtype
        self.cache = LRUCache(cache_bytes)
        self._base_sq: dict[str, torch.Tensor] = {}  # ||W||^2 per row of each target, for DoRA plans
        self._infos: dict[str, AdapterInfo] = {}
        self._dir_mtime: int | None = None
        self._lock = threading.RLock()
        self.error: str | None = None  # the directory itself cannot be read

    # scanning ------------------------------------------------------------------------------------------
    def scan(self) -> list[AdapterInfo]:
        """Rescan the directory; unchanged files keep their check, changed ones are checked again."""
        with self._lock:
            try:
                mtime = self.directory.stat().st_mtime_ns
                entries = sorted(p for p in self.directory.iterdir() if p.suffix in FILE_SUFFIXES and p.is_file())
                self.error = None
            except OSError as exc:
                self.error = f"the adapter directory cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
                self._infos, self._dir_mtime = {}, None
                return []
            infos: dict[str, AdapterInfo] = {}
            for path in entries:
                try:
                    stat = path.stat()
                except OSError:
                    continue
                old = self._infos.get(path.stem)
                if (
                    old is not None
                    and old.path == path
                    and (old.mtime_ns, old.size_bytes)
                    == (
                        stat.st_mtime_ns,
                        stat.st_size,
                    )
                ):
                    info = old
                else:
                    info = inspect_adapter(path, self.targets, self.cache.capacity)
                if path.stem in infos:  # a.safetensors and a.ckpt: the safetensors file wins (sorted first)
                    continue
                infos[path.stem] = info
            gone = {(i.name, i.mtime_ns, i.size_bytes) for i in self._infos.values()} - {
                (i.name, i.mtime_ns, i.size_bytes) for i in infos.values()
            }
            self.cache.drop(lambda k: any(version in gone for version in _versions(k)))
            self._infos, self._dir_mtime = infos, mtime
            for info in infos.values():
                if not info.fits:
                    log.warning("LoRA adapter %s not usable: %s", info.file, info.problem)
            return list(infos.values())

    def _fresh(self) -> None:
        """New or removed files are picked up without a reload: the directory's mtime says when to rescan."""
        try:
            mtime = self.directory.stat().st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._dir_mtime or self.error is not None:
            self.scan()

    def list(self) -> list[AdapterInfo]:
        with self._lock:
            self._fresh()
            return list(self._infos.values())

    def info(self, name: str) -> AdapterInfo | None:
        with self._lock:
            if name not in self._infos:
                self._fresh()
            return self._infos.get(name)

    def problem(self, name: str) -> str | None:
        """Why `name` cannot be used by a request, or None."""
        info = self.info(name)
        if info is None:
            return f"no adapter named {name!r} (GET /loras lists them)"
        if not info.fits:
            return f"adapter {name!r} does not fit this model: {info.problem}"
        return None

    # loading -------------------------------------------------------------------------------------------
    def _current(self, name: str) -> AdapterInfo:
        """The file's info, checked again if it changed on disk since the scan."""
        info = self.info(name)
        if info is None:
            raise AdapterError(f"no adapter named {name!r}")
        try:
            stat = info.path.stat()
        except OSError:
            self.scan()
            raise AdapterError(f"adapter {name!r}: its file is gone") from None
        if (stat.st_mtime_ns, stat.st_size) != (info.mtime_ns, info.size_bytes):
            self.scan()
            info = self._infos.get(name)
            if info is None:
                raise AdapterError(f"adapter {name!r}: its file is gone")
        if not info.fits:
            raise AdapterError(f"adapter {name!r} does not fit this model: {info.problem}")
        return info

    def load(self, name: str) -> LoadedAdapter:
        with self._lock:
            info = self._current(name)
            key = ("adapter", (info.name, info.mtime_ns, info.size_bytes))
            adapter = self.cache.get(key)
            if adapter is None:
                adapter = load_adapter(info, self.targets, self.device)
                self.cache.put(key, adapter, adapter.bytes)
            return adapter

    def entries(self, refs: Sequence[LoraRef]) -> list[PlanEntry]:
        """A request's adapters (request order) loaded, with their float32 strengths (as Stability's
        `lora_strength` buffers hold them; the conditioner's defaults to the DiT's) and expanded layer filters.
        A request keeps these for all its steps: a file changed on disk meanwhile does not change it."""
        out = []
        with self._lock:
            for i, r in enumerate(refs):
                try:
                    patterns = expand_layer_filter(check_layer_filter(r.layer_filter))
                except LayerFilterError as exc:
                    raise AdapterError(f"adapter {i} ({r.name!r}): layer_filter item {exc.index} {exc}") from None
                conditioner = r.strength if r.conditioner_strength is None else r.conditioner_strength
                out.append(PlanEntry(self.load(r.name), as_float32(r.strength), as_float32(conditioner), patterns))
        return out

    def plan_of(self, entries: Sequence[PlanEntry], stepwise: bool | None = None) -> SetPlan:
        """The plan of `entries` on the stepwise targets (True), the others (False) or all (None), cached by the
        adapter versions, strengths and filters it depends on."""
        with self._lock:
            if stepwise is None:
                parts = tuple((e.adapter.key, e.strength, e.conditioner_strength, e.layer_filter) for e in entries)
            elif stepwise:
                parts = tuple((e.adapter.key, e.strength, e.layer_filter) for e in entries)
            else:
                parts = tuple((e.adapter.key, e.conditioner_strength) for e in entries)
            key = ("plan", stepwise, parts)
            plan = self.cache.get(key)
            if plan is None:
                targets = self.targets
                if stepwise is not None:
                    targets = {n: t for n, t in targets.items() if t.stepwise == stepwise}
                with torch.no_grad():
                    plan = build_plan(entries, targets, self.dtype, self._base_sq)
                self.cache.put(key, plan, plan.bytes)
            return plan

    def plan(self, refs: Sequence[LoraRef], stepwise: bool | None = None) -> SetPlan:
        """The plan of `refs` (request order) on the stepwise targets (True), the others (False) or all (None)."""
        with self._lock:
            return self.plan_of(self.entries(refs), stepwise)

    def batch_key(self, refs: Sequence[LoraRef]) -> tuple:
        """() when the set shares forwards with anyone, whatever its intervals and filters; the whole set, controls
        included, when its DiT plans must be merged (dora-cols at a strength other than 0)."""
        with self._lock:
            merged = False
            for r in refs:
                info = self._infos.get(r.name)
                if info is not None and info.fits and not info.factored and as_float32(r.strength) != 0.0:
                    merged = True
            if not merged:
                return ()
            return (("lora-merged",) + tuple((r.name, float(r.strength), r.interval, r.layer_filter) for r in refs),)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            c = self.cache
            return {
                "budget_bytes": c.capacity,
                "used_bytes": c.used,
                "entries": len(c),
                "hits": c.hits,
                "misses": c.misses,
                "evictions": c.evictions,
            }


class Adapters:
    """Per-request adapters of one loaded model: the directory's registry plus the hooks on the model's targets.
    A family builds it from its target map; the model hands `rows(...)` to its forward, the request path calls
    `problem`, and `GET /loras` calls `listing`."""

    def __init__(
        self,
        directory: Path,
        targets: dict[str, Target],
        *,
        cache_mb: float,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        self.targets = targets
        self.registry = AdapterRegistry(
            Path(directory), targets, cache_bytes=int(cache_mb * MIB), device=device, dtype=dtype
        )
        infos = self.registry.scan()
        if self.registry.error:
            log.warning("LoRA: %s (%s)", self.registry.error, directory)
        else:
            log.info("LoRA: %d adapters in %s (%d usable)", len(infos), directory, sum(1 for i in infos if i.fits))
        self.hooks = AdapterHooks(targets)

    def problem(self, name: str) -> str | None:
        """Why a request may not name `name` (missing, or not fit for this model), or None: a look-up of what the
        last scan found, cheap enough for the request path."""
        return self.registry.problem(name)

    def batch_key(self, refs: Sequence[LoraRef]) -> tuple[Hashable, ...]:
        """What a request's adapters add to its batch key: () when they share forwards with any request."""
        return self.registry.batch_key(refs) if refs else ()

    def request(self, refs: Sequence[LoraRef]) -> RequestAdapters | None:
        """A request's adapters for all its steps (the conditioner's plan now, the DiT's at each step's sigma);
        None without adapters. Raises AdapterError when one cannot be used."""
        if not refs:
            return None
        return RequestAdapters(self.registry, self.registry.entries(refs), [r.interval for r in refs])

    def rows(self, segments: Sequence[tuple[int, int, SetPlan | None]]) -> RowPlans | None:
        """The argument a forward takes: each plan on its rows `[start, stop)` of the batch (None: nothing to do)."""
        return self.hooks.rows(segments)

    def listing(self, rescan: bool = False) -> dict[str, Any]:
        """Every file of the directory (usable or not, with the reason), the directory's own error, the cache's
        use and the layer names a request's layer filter is matched against, for `GET /loras`; `rescan` reads the
        directory again first (`POST /loras/reload`)."""
        infos = self.registry.scan() if rescan else self.registry.list()
        return {
            "directory_error": self.registry.error,
            "cache": self.registry.stats(),
            "layer_names": [t.filter_name for t in self.targets.values() if t.stepwise],
            "loras": [info.public() for info in sorted(infos, key=lambda i: i.name)],
        }

    def remove(self) -> None:
        """Take the hooks off the model's modules."""
        self.hooks.remove()
