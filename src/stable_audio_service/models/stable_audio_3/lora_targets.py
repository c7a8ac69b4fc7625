"""Where per-request adapters act on Stable Audio 3: the only part of adapter support that is SA3's own.

Stability's `load_and_apply_loras` (@ 636f906) calls `add_lora` on the DiT wrapper and on the conditioner, so an
adapter file names the DiT's modules `model.<path>` (relative to that wrapper) and the duration embedder
`conditioners.<id>.embedder.embedding.1`. Its LoRA changes the global conditioning and the duration token, in every
guidance branch. The T5Gemma encoder sits outside Stability's module tree and the autoencoder is never adapted.
"""

from __future__ import annotations

from torch import nn

from ...adapters import Target, collect_targets


def sa3_targets(dit: nn.Module, duration: nn.Module, duration_id: str) -> dict[str, Target]:
    """Every Linear/Conv1d of the DiT and the duration embedder's Linear, under the names adapter files use."""
    modules = [(f"model.{name}", m) for name, m in dit.named_modules()]
    modules.append((f"conditioners.{duration_id}.embedder.embedding.1", duration.linear))
    return collect_targets(modules)
