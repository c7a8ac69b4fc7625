"""Speed levers of Stable Audio 3 (issue 12): the default-on ones give the official numbers (up to float
round-off), the opt-in ones stay close on the tiny model (how close says nothing about audio quality)."""

from __future__ import annotations

import pytest
import torch

from stable_audio_service.models.stable_audio_3 import accel
from stable_audio_service.models.stable_audio_3.autoencoder import SameAutoencoder
from stable_audio_service.models.tiny import tiny_sa3_config


def tiny_autoencoder(structure: str, seed: int = 0) -> SameAutoencoder:
    """The tiny SAME of each structure with random weights (weight-norm `v` and new tokens drawn, as make_tiny)."""
    model = SameAutoencoder.from_config(tiny_sa3_config(structure))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("weight_v", "new_tokens")) or (param.dim() >= 2 and not param.any()):
                param.copy_(torch.randn(param.shape, generator=gen) * param[0].numel() ** -0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("structure", "length", "keep"),
    [("small", 76, 40), ("small", 238, 237), ("small", 174, 1), ("medium", 174, 108)],  # 1, 3, 2, 2 windows
)
def test_decode_kept_equals_the_official_decode_cut_to_the_clip(structure: str, length: int, keep: int) -> None:
    model = tiny_autoencoder(structure)
    latents = torch.randn(1, model.latent_dim, length, generator=torch.Generator().manual_seed(length))
    full = model.decode(latents, torch.Generator().manual_seed(5))[..., : keep * model.hop]
    kept = accel.decode_kept(model, latents, torch.Generator().manual_seed(5), keep)
    assert kept.shape == full.shape
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=0)
    quiet = accel.decode_kept(model, latents, None, keep)
    torch.testing.assert_close(quiet, model.decode(latents, None)[..., : keep * model.hop], atol=1e-5, rtol=0)
    assert not torch.allclose(quiet, kept)  # the draws reached the kept samples


def test_decode_kept_decodes_fewer_latents(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_autoencoder("small")
    seen: list[int] = []
    once = model._decode_once
    monkeypatch.setattr(model, "_decode_once", lambda x, noise: seen.append(x.shape[-1]) or once(x, noise))
    accel.decode_kept(model, torch.randn(1, model.latent_dim, 174), torch.Generator().manual_seed(0), 108)
    assert sum(seen) < 2 * 128  # the official decode: two windows of 128 latents
    assert sum(seen) <= 108 + 2 * 2 * accel.receptive_margin(accel._decoder_block(model))[0]


def test_configure_threads_sets_intra_op_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert accel.configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
