"""The Stable Audio 3 oracle fixtures' cases as this service's requests (shared by the parity tests)."""

from __future__ import annotations

from typing import Any

# Official `generate()` keyword -> request field (the same names in the HTTP body and GenerationParams).
_FIELDS = {
    "prompt": "prompt",
    "duration": "duration",
    "cfg_scale": "guidance_scale",
    "steps": "num_inference_steps",
    "seed": "seed",
    "negative_prompt": "negative_prompt",
    "apg_scale": "apg_scale",
    "init_noise_level": "init_noise_level",
}


def request_fields(case: dict) -> dict[str, Any]:
    """The scalar request fields of a case's `generate_kwargs` (audio inputs and adapters are the caller's)."""
    g = case["generate_kwargs"]
    return {ours: g[theirs] for theirs, ours in _FIELDS.items() if theirs in g}
