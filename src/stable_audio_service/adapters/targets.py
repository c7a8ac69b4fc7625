"""The modules of a base model that adapters may act on, named as the adapter files name them.

A family supplies its own map (which modules, under which names): that is the only part of adapter support that
depends on the model. Everything else here is the same for every family.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Target:
    """One `nn.Linear` / `nn.Conv1d` an adapter may act on, named as in the adapter files' keys."""

    name: str
    module: nn.Module
    fan_out: int
    fan_in: int  # in_features, or in_channels * kernel for a Conv1d
    # True for the denoiser's modules, run at every sampling step: a request's sigma interval and layer filter act
    # on them, at its (DiT) strength. False for a conditioner's, run once per request at its conditioner strength.
    stepwise: bool = True
    # The name a layer filter is matched against: relative to the denoiser module, as Stability's
    # `filter_lora_layers(dit, ...)` names it (`transformer.layers.0.self_attn.to_qkv`).
    filter_name: str = ""

    @property
    def conv(self) -> bool:
        return isinstance(self.module, nn.Conv1d)


def collect_targets(
    modules: Iterable[tuple[str, nn.Module]], *, prefix: str = "", stepwise: bool = True
) -> dict[str, Target]:
    """Every `nn.Linear` and `nn.Conv1d` of `(name, module)` pairs, in order, as Stability's `add_lora` finds them
    (other modules are skipped), named `prefix + name` (the files' keys) with `name` as their filter name. A
    grouped or non-zero-padded convolution is refused: the low-rank term of a Conv1d is applied as two plain
    convolutions, which only holds for those."""
    targets = {}
    for name, module in modules:
        key = prefix + name
        if isinstance(module, nn.Conv1d):
            if module.groups != 1 or module.padding_mode != "zeros":
                raise ValueError(f"{key}: grouped or non-zero-padded convolutions are not supported")
            fan_out = module.weight.shape[0]
            targets[key] = Target(key, module, fan_out, module.weight[0].numel(), stepwise, name)
        elif isinstance(module, nn.Linear):
            targets[key] = Target(key, module, module.out_features, module.in_features, stepwise, name)
    return targets
