"""Adapter files in Stability's LoRA checkpoint format: reading, and checking one against a base model's targets.

The format is what Stability's `train_lora.py` / `export_lora_safetensors` write (`stable_audio_3.models.lora` @
636f906): a `.safetensors` file of float16 tensors keyed `<module>.parametrizations.weight.0.<param>`, with the
`lora_config` JSON (`rank`, `alpha`, `adapter_type`, `include`, `exclude`) in its metadata; or the Lightning `.ckpt`
variant `{"state_dict", "lora_config"}`. A file is checked once, when its directory is scanned, so a request only
looks its verdict up.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import torch

from .targets import Target

SUPPORTED_TYPES = ("lora", "dora-rows", "dora-cols", "lora-xs")
# Types whose effect is (per output row) affine in the base product: they share a batch's base forward.
FACTORED_TYPES = frozenset({"lora", "dora-rows", "lora-xs"})
PARAMS_OF = {
    "lora": frozenset({"lora_A", "lora_B"}),
    "dora-rows": frozenset({"lora_A", "lora_B", "magnitude"}),
    "dora-cols": frozenset({"lora_A", "lora_B", "magnitude"}),
    "lora-xs": frozenset({"M_xs"}),
}
KNOWN_PARAMS = frozenset({"lora_A", "lora_B", "M_xs", "magnitude", "magnitude_r", "magnitude_c"})
KEY_RE = re.compile(r"^(?P<module>.+)\.parametrizations\.weight\.(?P<index>\d+)\.(?P<param>\w+)$")
FILE_SUFFIXES = (".safetensors", ".ckpt")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the request schema's pattern
MIB = 2**20


class AdapterError(RuntimeError):
    """An adapter cannot be used (missing, broken, or not made for this model); the message says why."""


# -- include / exclude (Stability's `_expand` / `_matches_any`) -----------------------------------------------


def expand_brackets(pattern: str) -> list[str]:
    """`a[0-2]b` -> `a0b a1b a2b` (inclusive, either direction). As in Stability's code, `layers[0-11]` expands to
    `layers0`...: without the dot it matches no module name."""
    parts = re.split(r"\[(\d+)-(\d+)\]", pattern)
    if len(parts) == 1:
        return [pattern]
    literals, ranges = parts[0::3], list(zip(parts[1::3], parts[2::3], strict=True))
    pools = []
    for a, b in ranges:
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        pools.append([str(n) for n in range(lo, hi + step, step)])
    out = []
    for combo in product(*pools):
        pieces = []
        for i, literal in enumerate(literals):
            pieces.append(literal)
            if i < len(combo):
                pieces.append(combo[i])
        out.append("".join(pieces))
    return out


def _matches_any(name: str, patterns: Sequence[str] | None) -> bool:
    return bool(patterns) and any(p in name for pattern in patterns for p in expand_brackets(pattern.strip()))


def is_targeted(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """Exclude wins over include; `include=None` takes everything, `include=[]` nothing (as `add_lora` does)."""
    if include is not None and not _matches_any(name, include):
        return False
    return not (exclude is not None and _matches_any(name, exclude))


# -- a request's layer filter (Stability's `filter_lora_layers`) ----------------------------------------------

# Substrings one request's layer filters may expand to in all (`layers.[0-999].` is a thousand).
MAX_FILTER_EXPANSION = 4096
_RANGE = re.compile(r"\[(\d+)-(\d+)\]")


class LayerFilterError(ValueError):
    """One item of a request's layer filter cannot be used; `index` says which."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def check_layer_filter(items: Sequence[str]) -> tuple[str, ...]:
    """A request's layer filter as Stability reads its comma-separated string: each substring lower-cased and
    stripped (its bracket ranges expand when matched). Raises LayerFilterError for a blank item (Stability's
    parser would keep a blank between commas as "" and so disable the adapter on every layer; strength 0 says that
    plainly), an item with a comma (Stability's string splits there: give each substring as its own item), or
    ranges expanding past MAX_FILTER_EXPANSION substrings in all."""
    out: list[str] = []
    total = 0
    for i, item in enumerate(items):
        pattern = item.lower().strip()
        if not pattern:
            raise LayerFilterError(i, "is blank: it would match every layer (strength 0 turns an adapter off)")
        if "," in pattern:
            raise LayerFilterError(i, "holds a comma: give each substring as its own item")
        total += math.prod(abs(int(b) - int(a)) + 1 for a, b in _RANGE.findall(pattern))
        if total > MAX_FILTER_EXPANSION:
            raise LayerFilterError(i, f"its bracket ranges expand past {MAX_FILTER_EXPANSION} substrings in all")
        out.append(pattern)
    return tuple(out)


def expand_layer_filter(patterns: Sequence[str]) -> tuple[str, ...]:
    """Every substring a checked layer filter matches with (`layers.[0-1].` -> `layers.0.`, `layers.1.`)."""
    return tuple(dict.fromkeys(p for pattern in patterns for p in expand_brackets(pattern)))


def layer_filtered(name: str, substrings: Sequence[str]) -> bool:
    """Whether a layer filter (expanded) disables an adapter on the layer `name`: any substring of it, OR-ed."""
    return any(s in name for s in substrings)


# -- reading files --------------------------------------------------------------------------------------------


def read_file(path: Path, *, tensors: bool) -> tuple[dict[str, Any], dict[str, tuple[tuple[int, ...], str]], dict]:
    """(lora_config, {key: (shape, dtype)}, {key: tensor} when `tensors`). safetensors: the config is the JSON of
    metadata["lora_config"]; .ckpt: `{"state_dict", "lora_config"}` read with `weights_only=True` (no pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            shapes = {}
            for key in f.keys():
                piece = f.get_slice(key)
                shapes[key] = (tuple(piece.get_shape()), str(piece.get_dtype()))
            values = {key: f.get_tensor(key) for key in f.keys()} if tensors else {}
        raw = meta.get("lora_config")
        config = json.loads(raw) if raw is not None else {}
        return config, shapes, values
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError("a .ckpt adapter must hold a dict with a 'state_dict' of tensors")
    state = ckpt["state_dict"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("its state_dict holds something other than tensors")
    config = ckpt.get("lora_config", {})
    shapes = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}
    return config, shapes, (dict(state) if tensors else {})


def resolve_type(declared: str, shapes: dict[str, tuple[tuple[int, ...], str]]) -> str:
    """Stability's `resolve_adapter_type`: legacy "dora" is dora-cols when the first magnitude is (1, n), dora-rows
    when it is (n, 1) or anything else."""
    if declared != "dora":
        return declared
    for key, (shape, _) in shapes.items():
        if key.endswith(".magnitude"):
            if len(shape) == 2 and shape[0] == 1:
                return "dora-cols"
            break
    return "dora-rows"


# -- what a scan knows about one file -------------------------------------------------------------------------


@dataclass
class AdapterInfo:
    """One file of the adapter directory, checked against the base model's shapes."""

    name: str
    file: str
    path: Path
    size_bytes: int
    mtime_ns: int
    adapter_type: str | None = None
    rank: int | None = None
    alpha: float | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    modules: tuple[str, ...] = ()  # modules the file holds tensors for
    targets: int = 0  # base modules its filter targets (it acts on these, tensors or not)
    tensors: int = 0
    memory_bytes: int = 0  # float32 once loaded
    problem: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.problem is None

    @property
    def factored(self) -> bool:
        return self.adapter_type in FACTORED_TYPES

    def public(self) -> dict[str, Any]:
        """What GET /loras shows (no local paths)."""
        return {
            "name": self.name,
            "file": self.file,
            "adapter_type": self.adapter_type,
            "rank": self.rank,
            "alpha": self.alpha,
            "include": self.include,
            "exclude": self.exclude,
            "modules": list(self.modules),
            "targeted_modules": self.targets,
            "tensors": self.tensors,
            "size_bytes": self.size_bytes,
            "memory_bytes": self.memory_bytes,
            "batching": None if not self.fits else ("shared" if self.factored else "grouped"),
            "fits": self.fits,
            "problem": self.problem,
            "warnings": list(self.warnings),
        }


def _check_filter(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"lora_config {what} must be a list of strings or null")
    return value


def inspect_adapter(path: Path, targets: dict[str, Target], budget_bytes: int) -> AdapterInfo:
    """Read and check one adapter file; never raises (a broken file comes back with `problem` set)."""
    stat = path.stat()
    info = AdapterInfo(path.stem, path.name, path, stat.st_size, stat.st_mtime_ns)
    if not NAME_RE.match(path.stem):
        info.problem = "its file name cannot be used as an adapter name (letters, digits, '.', '_', '-'; 128 at most)"
        return info
    try:
        config, shapes, values = read_file(path, tensors=stat.st_size <= budget_bytes)
        _check_into(info, config, shapes, values, targets, budget_bytes)
    except Exception as exc:  # a broken file is reported, never fatal
        info.problem = f"cannot be read as a LoRA checkpoint: {type(exc).__name__}: {str(exc)[:200]}"
    return info


def _check_into(
    info: AdapterInfo,
    config: Any,
    shapes: dict[str, tuple[tuple[int, ...], str]],
    values: dict[str, torch.Tensor],
    targets: dict[str, Target],
    budget_bytes: int,
) -> None:
    if not isinstance(config, dict):
        raise ValueError("lora_config is not a JSON object")
    declared = config.get("adapter_type", "lora")
    if not isinstance(declared, str):
        raise ValueError("lora_config adapter_type is not a string")
    info.adapter_type = resolve_type(declared, shapes)
    info.include = _check_filter(config.get("include"), "include")
    info.exclude = _check_filter(config.get("exclude"), "exclude")
    info.tensors = len(shapes)
    if not shapes:
        info.problem = "it holds no tensors"
        return
    per_module: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, (shape, dtype) in shapes.items():
        m = KEY_RE.match(key)
        if m is None or m["param"] not in KNOWN_PARAMS:
            info.problem = (
                f"tensor {key!r} is not a LoRA parametrization (<module>.parametrizations.weight.0.<A|B|...>)"
            )
            return
        if m["index"] != "0":
            info.problem = f"tensor {key!r} has stacking index {m['index']}; adapter files always use 0"
            return
        if not dtype.upper().startswith(("F", "BF")):
            info.problem = f"tensor {key!r} is {dtype}, not floating point"
            return
        per_module.setdefault(m["module"], {})[m["param"]] = shape
    if not any(p in ("lora_A", "lora_B", "M_xs") for params in per_module.values() for p in params):
        info.problem = "it holds no lora_A, lora_B or M_xs tensor"
        return
    kind = info.adapter_type
    if kind not in SUPPORTED_TYPES:
        info.problem = f"adapter type {kind!r} is not supported (supported: {', '.join(SUPPORTED_TYPES)}, legacy dora)"
        return
    rank = config.get("rank")
    if rank is None:  # Stability's infer_global_rank: the first A / B / M_xs in file order
        for key, (shape, _) in shapes.items():
            if key.endswith((".lora_A", ".M_xs")):
                rank = shape[0]
                break
            if key.endswith(".lora_B"):
                rank = shape[1]
                break
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        info.problem = "its rank is missing or not a positive integer" if rank is None else f"rank {rank!r} is invalid"
        return
    alpha = config.get("alpha", rank)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        info.problem = f"alpha {alpha!r} is not a finite number"
        return
    info.rank, info.alpha = rank, float(alpha)

    unknown = sorted(m for m in per_module if m not in targets)
    if unknown:
        info.problem = (
            f"{len(unknown)} of its modules are not in this model (e.g. {unknown[0]}): made for another model?"
        )
        return
    warnings = []
    ignored = sorted(set().union(*(set(p) - PARAMS_OF[kind] for p in per_module.values())))
    if ignored:
        warnings.append(
            f"tensors {', '.join(ignored)} are not used by a {kind} adapter (Stability's loader ignores them)"
        )
    if kind != "lora-xs":
        lone = sorted(m for m, p in per_module.items() if ("lora_A" in p) != ("lora_B" in p))
        if lone:
            warnings.append(
                f"{len(lone)} modules have only one of lora_A / lora_B (e.g. {lone[0]}): no update there "
                "(Stability's loader would pair a lone lora_B with a randomly initialised A)"
            )
    filtered_out = sorted(m for m in per_module if not is_targeted(m, info.include, info.exclude))
    if filtered_out:
        warnings.append(f"{len(filtered_out)} modules with tensors are left out by its include/exclude filter")
    memory = 0
    for module, params in per_module.items():
        t = targets[module]
        want = {"lora_A": (rank, t.fan_in), "lora_B": (t.fan_out, rank), "M_xs": (rank, rank)}
        if kind == "dora-rows":
            want["magnitude"] = (t.fan_out,)
        elif kind == "dora-cols":
            want["magnitude"] = (t.fan_in,)
        for param, shape in params.items():
            if param not in PARAMS_OF[kind]:
                continue
            expected = want[param]
            squeezed = tuple(s for s in shape if s != 1) if param == "magnitude" and len(shape) == 2 else shape
            if param == "magnitude" and len(shape) == 2 and squeezed == ():
                squeezed = (1,)
            if squeezed != expected:
                info.problem = (
                    f"{module}.{param} has shape {list(shape)}, this model needs {list(expected)}: "
                    "made for another model?"
                )
                return
            memory += math.prod(shape) * 4
        if kind == "lora-xs" and "M_xs" in params:
            if rank > min(t.fan_in, t.fan_out):
                info.problem = f"lora-xs rank {rank} is larger than {module}'s smaller side"
                return
            memory += rank * (t.fan_in + t.fan_out) * 4
    for key, tensor in values.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            info.problem = f"tensor {key!r} holds NaN or infinity"
            return
    info.modules = tuple(sorted(m for m in per_module if set(per_module[m]) & PARAMS_OF[kind]))
    info.targets = sum(1 for name in targets if is_targeted(name, info.include, info.exclude))
    info.memory_bytes = memory
    info.warnings = tuple(warnings)
    if memory > budget_bytes:
        info.problem = (
            f"it needs {memory / MIB:.1f} MiB loaded, more than the adapter cache "
            f"(STABLE_AUDIO_LORA_CACHE_MB = {budget_bytes / MIB:g})"
        )
