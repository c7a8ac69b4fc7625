"""What an ordered adapter set does to each targeted module, with the maths of Stability's `stable_audio_3.models.lora`.

Stability's library puts a `torch.nn.utils.parametrize` parametrization on every targeted weight and recomputes
the weight at each access (model.py `LoRAParametrization`, loader.py `load_and_apply_loras`, @ 636f906). With
`W2 = W.view(fan_out, -1)` and `c = float32(alpha / rank) * strength`:

* `lora`:      W' = W + c * (B @ A)
* `dora-rows`: W' = V / (||V||_row + 1e-12) * magnitude[:, None], V = W + c * (B @ A); strength 0 returns W
* `dora-cols`: the same with column norms and `magnitude[None, :]` (the legacy variant)
* `lora-xs`:   W' = W + c * (U_r @ M_xs @ V_r.T), U_r / V_r from the SVD of the ORIGINAL base weight (signs fixed
  so the largest |entry| of each column of U is positive); only M_xs is in the file

Adapters stack in request order, each acting on what the previous ones made (`W_k = f_k(W_{k-1})`): DoRA
normalises whatever reaches it. Every target is acted on unless the file's `include` / `exclude` filter says
otherwise, whether or not the file holds tensors for it: a DoRA adapter still renormalises a target it has no
tensors for (its magnitude defaults to the base weight's row norms, B to zero).

Why plans and not merged weights: one batch then serves requests with different adapters. The chain above is, per
output row, an affine map of W, so for `lora`, `dora-rows` and `lora-xs`

    x W'^T = (x W^T) * d + x A_cat^T B_cat^T

with `d` the product of the DoRA row scales `magnitude / (||V||_row + 1e-12)` (computed once per adapter set, from
that low-rank form in float64 without building any weight) and `A_cat`, `B_cat` the low-rank factors of every
adapter stacked with their coefficients folded into B. The base product `x W^T` is computed once for the whole
batch by the unmodified module; `LayerPlan.apply` then rescales and adds the low-rank term on one request's rows.
`dora-cols` scales the *inputs* of a layer per request, which no shared base product can express: such sets are
planned as merged weights (Stability's chain, exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .files import (
    FACTORED_TYPES,
    KEY_RE,
    PARAMS_OF,
    AdapterError,
    AdapterInfo,
    is_targeted,
    layer_filtered,
    read_file,
)
from .targets import Target

DORA_EPS = 1e-12


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
    _, _, values = read_file(info.path, tensors=True)
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


def as_float32(value: float) -> float:
    """A number as a float32 holds it (Stability's `lora_strength` buffer, a sigma bound compared with a float32
    timestep), as a Python float."""
    return float(torch.tensor(float(value), dtype=torch.float32))


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
    """An ordered adapter set at its strengths, on some of the model's targets, ready to apply."""

    applied: tuple[tuple[str, float], ...]  # (name, strength) in request order
    merged: bool
    layers: dict[str, LayerPlan] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.layers.values())


@dataclass(frozen=True)
class PlanEntry:
    """One adapter of a set as a plan uses it: its strength on stepwise targets (the denoiser), its strength on
    the others (a conditioner), and the expanded layer filter that leaves stepwise targets out."""

    adapter: LoadedAdapter
    strength: float
    conditioner_strength: float
    layer_filter: tuple[str, ...] = ()

    def strength_on(self, target: Target) -> float:
        """The strength this adapter acts on `target` with; 0 where its layer filter disables it (Stability's
        disabled parametrization passes the weight through, as strength 0 does)."""
        if not target.stepwise:
            return self.conditioner_strength
        if self.layer_filter and layer_filtered(target.filter_name, self.layer_filter):
            return 0.0
        return self.strength


def build_plan(
    entries: Sequence[PlanEntry],
    targets: dict[str, Target],
    dtype: torch.dtype,
    base_sq: dict[str, torch.Tensor] | None = None,
) -> SetPlan:
    """The per-module plan of an adapter set (request order) on `targets`. An adapter at strength 0 on a target,
    or filtered out there, is left out of that target's chain: DoRA's exact shortcut, `W + 0 * delta == W` for
    the additive types, and a disabled parametrization all pass the weight through, so the next adapter acts on
    what the previous enabled one made."""
    applied = tuple((e.adapter.info.name, float(e.strength)) for e in entries)
    chains: dict[str, list[tuple[str, AdapterLayer, torch.Tensor]]] = {}
    for name, target in targets.items():
        steps = []
        for e in entries:
            strength = float(e.strength_on(target))
            if strength != 0.0 and name in e.adapter.layers:
                coefficient = strength_coefficient(e.adapter, strength)
                steps.append((e.adapter.adapter_type, e.adapter.layers[name], coefficient))
        if steps:
            chains[name] = steps
    merged = any(kind not in FACTORED_TYPES for steps in chains.values() for kind, _, _ in steps)
    plan = SetPlan(applied, merged)
    for name, steps in chains.items():
        target = targets[name]
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
