"""Per-request LoRA adapters for Stable Audio 3, with the maths of Stability's `stable_audio_3.models.lora`.

Stability's library puts a `torch.nn.utils.parametrize` parametrization on every targeted weight and recomputes
the weight at each access (model.py `LoRAParametrization`, loader.py `load_and_apply_loras`, @ 636f906). With
`W2 = W.view(fan_out, -1)` and `c = float32(alpha / rank) * strength`:

* `lora`:      W' = W + c * (B @ A)
* `dora-rows`: W' = V / (||V||_row + 1e-12) * magnitude[:, None], V = W + c * (B @ A); strength 0 returns W
* `dora-cols`: the same with column norms and `magnitude[None, :]` (the legacy variant)
* `lora-xs`:   W' = W + c * (U_r @ M_xs @ V_r.T), U_r / V_r from the SVD of the ORIGINAL base weight (signs fixed
  so the largest |entry| of each column of U is positive); only M_xs is in the file

Adapters stack in request order, each acting on what the previous ones made (`W_k = f_k(W_{k-1})`): DoRA
normalises whatever reaches it. Every `nn.Linear` and `nn.Conv1d` of the DiT and of the conditioner (the
`seconds_total` embedder) is targeted unless the file's `include` / `exclude` filter says otherwise, whether or
not the file holds tensors for it: a DoRA adapter still renormalises a target it has no tensors for (its
magnitude defaults to the base weight's row norms, B to zero).

Why this module does not merge weights per request: one batch then serves requests with different adapters.
The chain above is, per output row, an affine map of W, so for `lora`, `dora-rows` and `lora-xs`

    x W'^T = (x W^T) * d + x A_cat^T B_cat^T

with `d` the product of the DoRA row scales `magnitude / (||V||_row + 1e-12)` (computed once per adapter set, from
that low-rank form in float64 without building any weight) and `A_cat`, `B_cat` the low-rank factors of every
adapter stacked with their coefficients folded into B. The base product `x W^T` is computed once for the whole
batch by the unmodified module; a forward hook then rescales and adds the low-rank term for each request's rows
(S-LoRA / Punica's segmented LoRA). Rows without adapters are never touched (bitwise the base output), and each
request's term is computed on its own rows only, so a request's numbers do not depend on its batch mates.
`dora-cols` scales the *inputs* of a layer per request, which no shared base product can express: such adapter
sets are applied as merged weights (Stability's chain, exactly) and `batch_key` keeps them in batches of their own.

Adapter files are found in one directory (name = file stem), checked against the base's module shapes when the
directory is scanned (never per request), loaded on first use into an LRU cache bounded in bytes, and never
written into the base weights.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("stable_audio_service.lora")

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
DORA_EPS = 1e-12
MIB = 2**20


class AdapterError(RuntimeError):
    """An adapter cannot be used (missing, broken, or not made for this model); the message says why."""


# -- the base model's targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One `nn.Linear` / `nn.Conv1d` an adapter may act on, named as in Stability's adapter keys."""

    name: str
    module: nn.Module
    fan_out: int
    fan_in: int  # in_features, or in_channels * kernel for a Conv1d

    @property
    def conv(self) -> bool:
        return isinstance(self.module, nn.Conv1d)


def sa3_targets(dit: nn.Module, duration: nn.Module, duration_id: str) -> dict[str, Target]:
    """Every Linear/Conv1d of the DiT (keys relative to Stability's DiT wrapper: `model.<path>`) and the duration
    embedder (`conditioners.<id>.embedder.embedding.1`), as `add_lora` finds them. The T5Gemma encoder sits outside
    Stability's module tree and the autoencoder is never adapted."""
    modules = [(f"model.{name}", m) for name, m in dit.named_modules()]
    modules.append((f"conditioners.{duration_id}.embedder.embedding.1", duration.linear))
    targets = {}
    for name, module in modules:
        if isinstance(module, nn.Conv1d):
            if module.groups != 1 or module.padding_mode != "zeros":
                raise ValueError(f"{name}: grouped or non-zero-padded convolutions are not supported")
            fan_out = module.weight.shape[0]
            targets[name] = Target(name, module, fan_out, module.weight[0].numel())
        elif isinstance(module, nn.Linear):
            targets[name] = Target(name, module, module.out_features, module.in_features)
    return targets


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


# -- reading files --------------------------------------------------------------------------------------------


def _read_file(path: Path, *, tensors: bool) -> tuple[dict[str, Any], dict[str, tuple[tuple[int, ...], str]], dict]:
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


def _resolve_type(declared: str, shapes: dict[str, tuple[tuple[int, ...], str]]) -> str:
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
        config, shapes, values = _read_file(path, tensors=stat.st_size <= budget_bytes)
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
    info.adapter_type = _resolve_type(declared, shapes)
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


# -- loaded adapters and the exact chain ------------------------------------------------------------------------


@dataclass
class AdapterLayer:
    """One targeted module of a loaded adapter (float32, on the model's device)."""

    A: torch.Tensor | None = None  # (rank, fan_in); lora-xs: V_r.T
    B: torch.Tensor | None = None  # (fan_out, rank); lora-xs: U_r
    M: torch.Tensor | None = None  # lora-xs core (rank, rank)
    magnitude: torch.Tensor | None = None  # DoRA: (fan_out,) rows or (fan_in,) cols

    def delta(self) -> torch.Tensor | None:
        """The unscaled 2-D update in Stability's order of operations (None: zero)."""
        if self.M is not None:  # `U @ M_xs @ V.T`, A being the V.T view
            return self.B @ self.M @ self.A
        if self.A is None:
            return None
        return torch.matmul(self.B, self.A)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, B) with delta = B @ A, for the factored path."""
        if self.M is not None:
            return self.A, self.B @ self.M
        if self.A is None:
            return None
        return self.A, self.B


@dataclass
class LoadedAdapter:
    info: AdapterInfo
    adapter_type: str
    scaling: torch.Tensor  # float32(alpha / rank), 0-d
    layers: dict[str, AdapterLayer]
    bytes: int

    @property
    def key(self) -> tuple[str, int, int]:
        """The file version: name, mtime, size."""
        return (self.info.name, self.info.mtime_ns, self.info.size_bytes)


def _svd_bases(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stability's lora-xs bases: SVD of the original weight in float32 on CPU, each column of U signed so that
    its largest-magnitude entry is positive (and the matching row of Vh with it). Returns (U_r, V_r)."""
    w = weight.detach().reshape(weight.shape[0], -1).cpu().float()
    u, _s, vh = torch.linalg.svd(w, full_matrices=False)
    idx = u.abs().argmax(dim=0)
    signs = u[idx, torch.arange(u.shape[1])].sign()
    signs[signs == 0] = 1
    u, vh = u * signs.unsqueeze(0), vh * signs.unsqueeze(1)
    return u[:, :rank].contiguous(), vh[:rank, :].T.contiguous()


def load_adapter(info: AdapterInfo, targets: dict[str, Target], device: torch.device | str) -> LoadedAdapter:
    """Load a checked file: its float16 values become float32 parameters exactly as `load_state_dict` copies them."""
    if not info.fits:
        raise AdapterError(f"adapter {info.name!r} cannot be used: {info.problem}")
    _, _, values = _read_file(info.path, tensors=True)
    kind = info.adapter_type
    assert kind is not None and info.rank is not None and info.alpha is not None
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in values.items():
        m = KEY_RE.match(key)
        if m is not None and m["param"] in PARAMS_OF[kind]:
            per_module.setdefault(m["module"], {})[m["param"]] = tensor
    layers: dict[str, AdapterLayer] = {}
    total = 0
    for name, target in targets.items():
        if not is_targeted(name, info.include, info.exclude):
            continue
        params = {k: v.to(device=device, dtype=torch.float32) for k, v in per_module.get(name, {}).items()}
        weight = target.module.weight
        layer = AdapterLayer()
        if kind in ("lora", "dora-rows", "dora-cols"):
            # a missing A or B keeps Stability's init: B = 0 makes the update zero whatever A is
            if "lora_A" in params and "lora_B" in params:
                layer.A, layer.B = params["lora_A"], params["lora_B"]
        if kind in ("dora-rows", "dora-cols"):
            mag = params.get("magnitude")
            if mag is None:  # Stability's init: the norms of the original weight
                w2 = weight.detach().reshape(weight.shape[0], -1)
                mag = w2.norm(dim=1 if kind == "dora-rows" else 0).to(device=device, dtype=torch.float32)
            layer.magnitude = mag.reshape(-1)
        if kind == "lora-xs" and "M_xs" in params:
            u, v = _svd_bases(weight, info.rank)
            layer.A, layer.B, layer.M = v.to(device).T, u.to(device), params["M_xs"]
        if kind in ("lora", "lora-xs") and layer.A is None:
            continue  # no tensors: no effect
        layers[name] = layer
        total += sum(t.numel() * 4 for t in (layer.A, layer.B, layer.M, layer.magnitude) if t is not None)
    scaling = torch.tensor(info.alpha / info.rank, dtype=torch.float32)
    return LoadedAdapter(info, kind, scaling, layers, total)


def strength_coefficient(adapter: LoadedAdapter, strength: float) -> torch.Tensor:
    """`self.scaling * self.lora_strength`: float32(alpha/rank) times the float32 strength buffer, in float32."""
    return adapter.scaling * torch.tensor(float(strength), dtype=torch.float32)


def _dora_direction(
    w: torch.Tensor, layer: AdapterLayer, c: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, ||V|| + eps) of Stability's `dora_forward`: V = W_2d (float32) + c * delta, norms along `dim`."""
    v = w.view(w.shape[0], -1).to(torch.float32)
    delta = layer.delta()
    if delta is not None:  # without tensors B is zero and so is the update: V = W exactly
        v = v + c * delta
    return v, v.norm(dim=dim, keepdim=True) + DORA_EPS


def official_weight(weight: torch.Tensor, steps: Sequence[tuple[str, AdapterLayer, torch.Tensor]]) -> torch.Tensor:
    """The parametrized weight Stability's chain gives (`W_k = f_k(W_{k-1})`), op for op; strength-0 steps must
    already be dropped (DoRA returns W unchanged there, the additive types add an exact zero)."""
    w = weight.detach()
    shape = w.shape
    for kind, layer, c in steps:
        c = c.to(w.device)
        if kind in ("lora", "lora-xs"):
            delta = layer.delta()
            if delta is not None:
                w = w + (c * delta.view(shape)).to(w.dtype)
            continue
        dim = 1 if kind == "dora-rows" else 0
        v, norm = _dora_direction(w, layer, c, dim)
        w = ((v / norm) * layer.magnitude.unsqueeze(dim)).view(shape).to(w.dtype)
    return w


# -- plans: what one adapter set does to each module -------------------------------------------------------------


@dataclass
class LayerPlan:
    """One module under one adapter set: `out = base * d + x A^T B^T` (factored) or `x W^T + b` (merged)."""

    A: torch.Tensor | None = None  # (R, fan_in), or a conv weight (R, in, k)
    B: torch.Tensor | None = None  # (fan_out, R), or (fan_out, R, 1)
    d: torch.Tensor | None = None  # (fan_out,), or (fan_out, 1) for a conv
    shift: torch.Tensor | None = None  # bias * (1 - d): what rescaling the biased base output must add back
    weight: torch.Tensor | None = None  # merged: the whole parametrized weight

    @property
    def bytes(self) -> int:
        parts = (self.A, self.B, self.d, self.shift, self.weight)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def apply(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Turn the base output `y` of rows `x` into the adapted output, in place."""
        conv = isinstance(module, nn.Conv1d)
        bias = module.bias
        if self.weight is not None:
            if conv:
                y.copy_(F.conv1d(x, self.weight, bias, module.stride, module.padding, module.dilation))
            else:
                y.copy_(F.linear(x, self.weight, bias))
            return
        if self.d is not None:
            y.mul_(self.d)
            if self.shift is not None:
                y.add_(self.shift)
        if self.A is not None:
            if conv:
                h = F.conv1d(x, self.A, None, module.stride, module.padding, module.dilation)
                y.add_(F.conv1d(h, self.B))
            else:  # y += (x A^T) B^T, accumulated in place
                h = F.linear(x, self.A)
                y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), self.B.T)


@dataclass
class SetPlan:
    """An ordered adapter set at its strengths, ready to apply."""

    applied: tuple[tuple[str, float], ...]  # (name, strength) in request order
    merged: bool
    layers: dict[str, LayerPlan] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.layers.values())


def build_plan(
    entries: Sequence[tuple[LoadedAdapter, float]],
    targets: dict[str, Target],
    dtype: torch.dtype,
    base_sq: dict[str, torch.Tensor] | None = None,
) -> SetPlan:
    """The per-module plan of an adapter set (request order). Strength 0 drops an adapter: DoRA's exact shortcut,
    and `W + 0 * delta == W` for the additive types."""
    applied = tuple((a.info.name, float(s)) for a, s in entries)
    live = [(a, strength_coefficient(a, s)) for a, s in entries if float(s) != 0.0]
    merged = any(a.adapter_type not in FACTORED_TYPES for a, _ in live)
    plan = SetPlan(applied, merged)
    for name, target in targets.items():
        steps = [(a.adapter_type, a.layers[name], c) for a, c in live if name in a.layers]
        if not steps:
            continue
        weight = target.module.weight
        if merged:
            plan.layers[name] = LayerPlan(weight=official_weight(weight, steps).to(weight.dtype))
            continue
        plan.layers[name] = _factored(target, steps, dtype, base_sq)
    return plan


def _factored(
    target: Target,
    steps: list[tuple[str, AdapterLayer, torch.Tensor]],
    dtype: torch.dtype,
    base_sq: dict[str, torch.Tensor] | None = None,
) -> LayerPlan:
    """Fold the chain into `W' = diag(d) W + U V` (V: every A stacked, U: every B with its coefficient and the
    DoRA row scales that follow it). A DoRA step's row norms come from that form without building W':
    ||d*W + U V||^2_row = d^2 ||W||^2_row + 2 d (W V^T . U)_row + (U (V V^T) . U)_row, accumulated in float64
    (equal to Stability's norms of the materialised weight to float32 rounding; `official_weight` is the exact
    chain). `base_sq` caches ||W||^2_row per target across plans. W V^T is a float32 product (the cross term is a
    small part of the norm; a float64 product would cost far more planning time for nothing)."""
    weight = target.module.weight
    device = weight.device
    acc = torch.float32 if device.type == "mps" else torch.float64
    dora = any(kind == "dora-rows" for kind, _, _ in steps)
    w = weight.detach().reshape(target.fan_out, -1).float() if dora else None
    d: torch.Tensor | None = None
    As: list[torch.Tensor] = []
    Bs: list[torch.Tensor] = []
    WAt: list[torch.Tensor] = []  # W @ A_j^T per term (DoRA only)
    for kind, layer, c in steps:
        pair = layer.factors()
        if pair is not None:
            As.append(pair[0].to(acc))
            Bs.append(pair[1].to(acc) * float(c))  # c is float32: exact in float64
            if w is not None:  # float32 product (fast), float64 algebra on the small results
                WAt.append((w @ pair[0].float().T).to(acc))
        if kind != "dora-rows":
            continue
        if base_sq is None or target.name not in base_sq:
            sq = torch.linalg.vector_norm(w, dim=1).to(acc).pow(2)
            if base_sq is not None:
                base_sq[target.name] = sq
        else:
            sq = base_sq[target.name]
        scale = torch.ones_like(sq) if d is None else d
        norm2 = scale.pow(2) * sq
        if As:
            U, V = torch.cat(Bs, dim=1), torch.cat(As)
            cross = sum((wat * b).sum(dim=1) for wat, b in zip(WAt, Bs, strict=True))
            norm2 = norm2 + 2 * scale * cross + ((U @ (V @ V.T)) * U).sum(dim=1)
        r = layer.magnitude.to(acc) / (norm2.clamp_min(0).sqrt() + DORA_EPS)
        d = r if d is None else d * r
        Bs = [b * r[:, None] for b in Bs]
    plan = LayerPlan()
    if As:
        A, B = torch.cat(As).to(dtype), torch.cat(Bs, dim=1).to(dtype)
        if target.conv:
            mod = target.module
            A = A.reshape(A.shape[0], mod.in_channels, -1)
            B = B.unsqueeze(-1)
        plan.A, plan.B = A.contiguous(), B.contiguous()
    if d is not None:
        bias = target.module.bias
        plan.d = (d.view(-1, 1) if target.conv else d).to(dtype).contiguous()
        if bias is not None:  # (x W^T + b) d + b (1 - d) = (x W^T) d + b
            shift = bias.detach().to(acc) * (1 - d)
            plan.shift = (shift.view(-1, 1) if target.conv else shift).to(dtype).contiguous()
    return plan


# -- applying plans to rows of a forward pass -------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[tuple[tuple[int, int, SetPlan], ...] | None] = contextvars.ContextVar(
    "sa3_lora_rows", default=None
)
_WINDOW: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("sa3_lora_window", default=None)


@contextmanager
def applied_to_rows(segments: Sequence[tuple[int, int, SetPlan | None]]) -> Iterator[None]:
    """While inside, hooked modules apply each plan to its rows `[start, stop)` of the batch dimension."""
    live = tuple((a, b, p) for a, b, p in segments if p is not None and p.layers)
    if not live:
        yield
        return
    token = _ACTIVE.set(live)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextmanager
def rows(start: int, stop: int) -> Iterator[None]:
    """The modules called inside see only rows `[start, stop)` of the batch (the DiT projects its per-request
    vectors request by request)."""
    if _ACTIVE.get() is None:
        yield
        return
    token = _WINDOW.set((start, stop))
    try:
        yield
    finally:
        _WINDOW.reset(token)


def _hook(name: str):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        segments = _ACTIVE.get()
        if segments is None:
            return None
        x = args[0]
        lo, hi = _WINDOW.get() or (0, x.shape[0])
        if hi - lo != x.shape[0]:
            raise RuntimeError(f"LoRA rows of {name}: {x.shape[0]} rows where {hi - lo} were announced")
        for start, stop, plan in segments:
            layer = plan.layers.get(name)
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if layer is None or b <= a:
                continue
            layer.apply(module, x[a:b], output[a:b])
        return output

    return hook


def install_hooks(targets: dict[str, Target]) -> list[Any]:
    """A forward hook on every target: a no-op outside `applied_to_rows`."""
    return [t.module.register_forward_hook(_hook(name)) for name, t in targets.items()]


# -- the adapter directory ---------------------------------------------------------------------------------------


class _LRU:
    """Byte-bounded LRU; an entry larger than the budget is not kept (its users hold it while they need it)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self.used = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Any) -> Any | None:
        hit = self.items.get(key)
        if hit is None:
            self.misses += 1
            return None
        self.items.move_to_end(key)
        self.hits += 1
        return hit[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        if key in self.items:
            self.used -= self.items.pop(key)[1]
        if size > self.budget:
            return
        self.items[key] = (value, size)
        self.used += size
        while self.used > self.budget:
            _, (_, freed) = self.items.popitem(last=False)
            self.used -= freed
            self.evictions += 1

    def drop(self, predicate) -> None:
        for key in [k for k in self.items if predicate(k)]:
            self.used -= self.items.pop(key)[1]


def _f32(value: float) -> float:
    """A strength as the float32 `lora_strength` buffer holds it."""
    return float(torch.tensor(float(value), dtype=torch.float32))


def _versions(key: Any) -> list[tuple[str, int, int]]:
    """The adapter file versions a cache key depends on."""
    if key[0] == "adapter":
        return [key[1]]
    return [version for version, _ in key[1]]


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
        self.cache = _LRU(cache_bytes)
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
                    info = inspect_adapter(path, self.targets, self.cache.budget)
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

    def plan(self, refs: Sequence[Any]) -> SetPlan:
        """The plan of `refs` (objects with .name and .strength, request order), cached by adapter versions and
        float32 strengths."""
        with self._lock:
            adapters = [self.load(r.name) for r in refs]
            strengths = [_f32(r.strength) for r in refs]
            key = ("plan", tuple((a.key, s) for a, s in zip(adapters, strengths, strict=True)))
            plan = self.cache.get(key)
            if plan is None:
                with torch.no_grad():
                    entries = list(zip(adapters, strengths, strict=True))
                    plan = build_plan(entries, self.targets, self.dtype, self._base_sq)
                self.cache.put(key, plan, plan.bytes)
            return plan

    def batch_key(self, refs: Sequence[Any]) -> tuple:
        """() when the set shares forwards with anyone; the whole set when it must be merged (dora-cols)."""
        with self._lock:
            merged = False
            for r in refs:
                info = self._infos.get(r.name)
                if info is not None and info.fits and not info.factored and _f32(r.strength) != 0.0:
                    merged = True
            if not merged:
                return ()
            return (("lora-merged",) + tuple((r.name, float(r.strength)) for r in refs),)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            c = self.cache
            return {
                "budget_bytes": c.budget,
                "used_bytes": c.used,
                "entries": len(c.items),
                "hits": c.hits,
                "misses": c.misses,
                "evictions": c.evictions,
            }


# -- what the family uses ---------------------------------------------------------------------------------------


class SA3Loras:
    """LoRA support of one loaded Stable Audio 3 model: the registry plus the hooks on its modules."""

    def __init__(
        self,
        directory: Path,
        dit: nn.Module,
        duration: nn.Module,
        duration_id: str,
        *,
        cache_mb: float,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        self.targets = sa3_targets(dit, duration, duration_id)
        self.registry = AdapterRegistry(
            Path(directory), self.targets, cache_bytes=int(cache_mb * MIB), device=device, dtype=dtype
        )
        infos = self.registry.scan()
        if self.registry.error:
            log.warning("LoRA: %s (%s)", self.registry.error, directory)
        else:
            log.info("LoRA: %d adapters in %s (%d usable)", len(infos), directory, sum(1 for i in infos if i.fits))
        self._handles = install_hooks(self.targets)

    def problem(self, name: str) -> str | None:
        return self.registry.problem(name)

    def batch_key(self, refs: Sequence[Any]) -> tuple:
        return self.registry.batch_key(refs) if refs else ()

    def plan(self, refs: Sequence[Any]) -> SetPlan | None:
        """None without adapters; raises AdapterError when one cannot be used."""
        return self.registry.plan(refs) if refs else None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
