"""Each opt-in speed setting's max deviation from fp32 on the real-size random SA3 small model, one component at a
time (one DiT forward, one decode, one text encoding). Random weights: this says nothing about audio quality.

    python -m bench.sa3_lever_deviation
"""

from __future__ import annotations

import copy
import json

import torch

from .common import quiet


def main() -> None:
    quiet()
    from stable_audio_service.models.base import GenerationParams
    from stable_audio_service.models.stable_audio_3 import accel
    from stable_audio_service.models.stable_audio_3.accel import SA3Options

    from .sa3_real import build_real_small

    model = build_real_small(options=SA3Options(cache_request_tensors=False, decode_kept=False))
    params = GenerationParams(
        prompt="warm analog synth pads", duration=10.0, guidance_scale=1.0, num_inference_steps=8, seed=1
    )
    state = model.start(params)
    x, t = state.x, state.sigmas[:, 0]
    args = (x, t, state.context, state.global_cond, state.local_cond, state.padding_mask, [1])
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        ref = model.dit(*args)
        kv = model.dit(*args[:-1], [1], model.dit.cross_kv(state.context))
        out["request caches: cross-attention K/V + local embeddings (DiT forward)"] = {
            "max_abs": float((kv - ref).abs().max()),
            "ref_max": float(ref.abs().max()),
        }
        qdit = accel._quantize_linears(copy.deepcopy(model.dit))
        got = qdit(*args)
        out["int8 DiT (one forward)"] = {
            "max_abs": float((got - ref).abs().max()),
            "ref_max": float(ref.abs().max()),
            "rel_l2": float((got - ref).norm() / ref.norm()),
        }
        del qdit
        latents = torch.randn(1, 256, 174, generator=torch.Generator().manual_seed(0))
        keep = 108
        full = model.autoencoder.decode(latents, torch.Generator().manual_seed(2))[..., : keep * 4096]
        kept = model.autoencoder.decode(latents, torch.Generator().manual_seed(2), keep=keep)
        out["decode_kept (10 s)"] = {"max_abs": float((kept - full).abs().max()), "ref_max": float(full.abs().max())}
        qae = accel._quantize_linears(copy.deepcopy(model.autoencoder))
        got = qae.decode(latents, torch.Generator().manual_seed(2), keep=keep)
        out["int8 SAME decode (10 s)"] = {
            "max_abs": float((got - full).abs().max()),
            "ref_max": float(full.abs().max()),
            "rel_l2": float((got - full).norm() / full.norm()),
        }
        del qae
        ref_text = model.text.encode(params.prompt).rows
        model.text.__dict__["encoder"] = accel._quantize_linears(model.text.encoder)
        model.text.cache.capacity = 0
        got = model.text.encode(params.prompt).rows
        out["int8 T5Gemma (prompt rows)"] = {
            "max_abs": float((got - ref_text).abs().max()),
            "ref_max": float(ref_text.abs().max()),
            "rel_l2": float((got - ref_text).norm() / ref_text.norm()),
        }
    for name, row in out.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
