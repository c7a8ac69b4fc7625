"""Speed settings of Stable Audio 3 (`SA3Options`): the default-on ones give the official numbers (up to float
round-off), the opt-in ones stay close on the tiny model (how close says nothing about audio quality)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stable_audio_service.models.stable_audio_3 import accel
from stable_audio_service.models.stable_audio_3 import autoencoder as ae
from stable_audio_service.models.stable_audio_3.accel import SA3Options
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
    kept = model.decode(latents, torch.Generator().manual_seed(5), keep=keep)
    assert kept.shape == full.shape
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=0)
    quiet = model.decode(latents, None, keep=keep)
    torch.testing.assert_close(quiet, model.decode(latents, None)[..., : keep * model.hop], atol=1e-5, rtol=0)
    assert not torch.allclose(quiet, kept)  # the draws reached the kept samples


def test_decode_kept_decodes_fewer_latents(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_autoencoder("small")
    seen: list[int] = []
    once = model._decode_once
    monkeypatch.setattr(model, "_decode_once", lambda x, noise: seen.append(x.shape[-1]) or once(x, noise))
    model.decode(torch.randn(1, model.latent_dim, 174), torch.Generator().manual_seed(0), keep=108)
    assert sum(seen) < 2 * 128  # the official decode: two windows of 128 latents
    block = next(m for m in model.decoder.layers if isinstance(m, ae._ResamplingBlock))
    assert sum(seen) <= 108 + 2 * 2 * block.receptive_margin()[0]


def test_keep_draws_cannot_be_replayed() -> None:
    model = tiny_autoencoder("small")
    with pytest.raises(ValueError, match="replayed"):
        model.decode(torch.randn(1, model.latent_dim, 8), noises=[], keep=4)


@pytest.mark.parametrize("unit", [1, 7])
@pytest.mark.parametrize("latents", [5, 127, 128, 129, 200, 224, 321])
def test_windows_tile_the_output_in_the_official_order(latents: int, unit: int) -> None:
    """Encode and decode share one window list: the survivors of every window tile the output once, each inside
    its window and past its trimmed left edge, and the last window is anchored to the end."""
    for total in (latents * unit, latents * unit + unit - 1):
        windows = ae.windows(total, unit)
        assert windows[0].first == 0 and windows[-1].end == latents
        assert all(a.end == b.first for a, b in zip(windows, windows[1:], strict=False))
        for w in windows:
            assert w.at <= w.first <= w.end <= w.at + w.size // unit
            assert w.source + w.size <= total
        if latents >= ae.WINDOW_LATENTS:
            assert {w.size for w in windows} == {ae.WINDOW_LATENTS * unit}
            assert windows[-1].source + windows[-1].size == total and windows[-1].at == latents - ae.WINDOW_LATENTS
        assert ae.windows(total, unit, chunked=False) == [ae.Window(0, total, 0, 0, latents)]


def test_options_are_fixed_and_checked() -> None:
    from stable_audio_service.config import Settings

    options = SA3Options()
    assert options.decode_kept and options.cache_request_tensors and options.keep_inpaint_source
    assert (options.threads, options.quantize, options.compile) == (None, "none", False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.decode_kept = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="int4"):
        SA3Options(quantize="int4")
    with pytest.raises(ValueError, match="threads"):
        SA3Options(threads=-1)
    served = SA3Options.from_settings(Settings(threads=3, quantize="int8-dit", compile=True))
    assert served == SA3Options(threads=3, quantize="int8-dit", compile=True)
    assert SA3Options.from_settings(Settings()) == SA3Options(threads=0)  # the service's default: one per core


def test_configure_threads_sets_intra_op_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert accel.configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_sa3(tmp_path_factory):
    from stable_audio_service.models.stable_audio_3.family import StableAudio3Model
    from stable_audio_service.models.tiny import make_tiny

    path = make_tiny(tmp_path_factory.mktemp("sa3-accel") / "small", family="sa3", structure="small")
    return lambda options=None: StableAudio3Model.from_checkpoint(
        path, name="tiny", device="cpu", dtype=torch.float32, options=options
    )


def _generate(model, seed: int = 3, **fields):
    from stable_audio_service.models.base import GenerationParams

    params = dict(prompt="a drum", duration=1.0, guidance_scale=1.0, num_inference_steps=3, seed=seed) | fields
    state = model.start(GenerationParams(**params))
    while not state.finished:
        model.step([state])
    return state.x.clone(), model.finish(state)


def _inpaint_fields(model) -> dict:
    import numpy as np

    source = np.random.default_rng(0).uniform(-0.5, 0.5, (model.channels, model.sample_rate)).astype(np.float32)
    return {"inpaint_audio": source, "inpaint_regions": [(0.25, 0.75)]}


@pytest.mark.parametrize("case", ["t2a", "guided", "inpaint"])
def test_the_exact_levers_keep_the_plain_path_numbers(tiny_sa3, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    from stable_audio_service.models.stable_audio_3 import family

    model = tiny_sa3()
    plain = tiny_sa3(SA3Options(cache_request_tensors=False, decode_kept=False))  # no caches, whole windows
    fields = {"t2a": {}, "guided": {"guidance_scale": 4.0}, "inpaint": _inpaint_fields(model)}[case]
    built: list[int] = []
    for each in (model, plain):
        local_embeds = each.dit.local_embeds
        monkeypatch.setattr(
            each.dit, "local_embeds", lambda c, *rest, f=local_embeds: built.append(c.shape[0]) or f(c, *rest)
        )
    fast_latents, fast_audio = _generate(model, **fields)
    assert built == [1]  # the local-conditioning embeddings were computed once for the request, not per step
    plain_latents, plain_audio = _generate(plain, **fields)
    assert built == [1]
    assert torch.equal(fast_latents, plain_latents)
    assert abs(fast_audio - plain_audio).max() <= 1e-5
    monkeypatch.setattr(family, "LOCAL_EMBED_CACHE_BYTES", 0)  # over the bound: computed in the forward again
    capped_latents, _ = _generate(model, **fields)
    assert built == [1] and torch.equal(capped_latents, plain_latents)


def test_cached_embeddings_batch_like_solo_requests(tiny_sa3) -> None:
    """Two requests (one guided inpainting, one plain) stepped together give their solo latents."""
    from stable_audio_service.models.base import GenerationParams

    model = tiny_sa3()
    requests = [
        dict(prompt="a drum", duration=1.0, guidance_scale=3.0, num_inference_steps=3, seed=1) | _inpaint_fields(model),
        dict(prompt="a bell", duration=1.0, guidance_scale=1.0, num_inference_steps=3, seed=2),
    ]
    solo = [_generate(model, **r)[0] for r in requests]
    states = [model.start(GenerationParams(**r)) for r in requests]
    while not states[0].finished:
        model.step(states)
    for state, expected in zip(states, solo, strict=True):
        assert state.local_embeds is not None
        assert torch.equal(state.x, expected)


@pytest.mark.skipif(not accel.int8_available(), reason="this torch build has no dynamic int8 kernels")
def test_int8_quantises_every_linear_and_stays_near_fp32(tiny_sa3) -> None:
    from torch import nn

    ref_latents, _ = _generate(tiny_sa3())
    model = tiny_sa3(SA3Options(quantize="int8"))
    assert model.speed_settings["int8"] == ["dit", "autoencoder", "text"]
    for part in (model.dit, model.autoencoder, model.text.encoder):
        assert not [m for m in part.modules() if type(m) is nn.Linear]  # all replaced by dynamic int8 Linears
    latents, audio = _generate(model)
    assert not torch.equal(latents, ref_latents)  # int8 changes the numbers: hence opt-in
    rel = float((latents - ref_latents).norm() / ref_latents.norm())
    assert rel < 0.2, rel
    assert abs(audio).max() <= 1.0


@pytest.mark.skipif(not accel.int8_available(), reason="this torch build has no dynamic int8 kernels")
def test_int8_dit_quantises_the_dit_alone(tiny_sa3) -> None:
    from torch import nn

    model = tiny_sa3(SA3Options(quantize="int8-dit"))
    assert model.speed_settings["int8"] == ["dit"]
    assert not [m for m in model.dit.modules() if type(m) is nn.Linear]
    for part in (model.autoencoder, model.text.encoder):
        assert [m for m in part.modules() if type(m) is nn.Linear]  # still fp32
    with pytest.raises(RuntimeError, match="lora_dir"):  # the adapters' hooks need the fp32 DiT
        model.enable_loras(model.files.root)
