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
    """Every Linear/Conv1d of the DiT and the duration embedder's Linear, under the names adapter files use. The
    DiT's are stepwise (Stability's `DiffusionTransformer.forward` applies each adapter's sigma interval and layer
    filter to them, filters matching names relative to the DiT); the duration embedder is a conditioner's."""
    targets = collect_targets(dit.named_modules(), prefix="model.")
    duration_name = f"conditioners.{duration_id}.embedder.embedding.1"
    targets.update(collect_targets([(duration_name, duration.linear)], stepwise=False))
    return targets
