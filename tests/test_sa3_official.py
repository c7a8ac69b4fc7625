"""Stable Audio 3 through `StableAudio3Model` against Stability's own library (the oracle fixtures in
../shared/fixtures/sa3-official), plus batching, checkpoint errors and the official-format tiny model.

Every fixture case runs from the seed as the engine runs it (from_checkpoint -> start -> step x N -> finish).
What every CPU computes identically is pinned bitwise: sizes, padding mask, sigma schedule, every RNG draw. Each
stage is then compared fed the official inputs of that stage, with a tight tolerance relative to the values' scale
(text rows, conditioning, one DiT call per step, the decode with its stored draws), and the whole chain end to end
with a per-case tolerance from the oracle's own cross-host spread. tests/oracle.py says where each figure comes from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stable_audio_service.models.base import GenerationParams
from stable_audio_service.models.loading import ModelLoadError
from stable_audio_service.models.stable_audio_3 import sampling
from stable_audio_service.models.stable_audio_3.accel import SA3Options
from stable_audio_service.models.stable_audio_3.family import StableAudio3Model, sa3_limits
from stable_audio_service.models.tiny import make_tiny

from . import oracle
from .oracle import (
    FIXTURES,
    fixture,
    fixture_cases,
    maxdiff,
    params_of,
    with_oracle_threads,  # noqa: F401 (autouse: this module's torch threads)
)

NAMES = ("medium-tiny", "small-tiny")
CASES = [(name, case) for name in NAMES for case in fixture_cases(name)] or [("none", "none")]
STEP_CASES = [(name, case) for name in NAMES for case in fixture_cases(name, "denoised_per_step")] or [("none", "none")]
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"{FIXTURES} is absent (the oracle fixtures live beside the repository, in CI)"
)


_MODELS: dict[tuple[str, SA3Options], StableAudio3Model] = {}


def fixture_model(name: str, options: SA3Options | None = None) -> StableAudio3Model:
    """The fixture's model, returning exactly what Stability's generate() returns unless `options` say otherwise."""
    options = options or SA3Options(keep_inpaint_source=False)
    if (name, options) not in _MODELS:
        _MODELS[name, options] = StableAudio3Model.from_checkpoint(
            FIXTURES / name, name=name, device="cpu", dtype=torch.float32, text_cache_size=16, options=options
        )
    return _MODELS[name, options]


def run(model: StableAudio3Model, params: GenerationParams, on_step=None):
    state = model.start(params)
    while not state.finished:
        model.step([state])
        if on_step is not None:
            on_step(state)
    latents = state.x.clone()
    return state, latents, model.finish(state)


def assert_rel(ours, ref, rel: float, what: str) -> None:
    ok, message = oracle.close_rel(ours, ref, rel)
    assert ok, f"{what}: {message}"


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES)
def test_exact_parts_are_bitwise(name, case):
    """Sizes, padding mask, schedule and every RNG draw: the same on every CPU, so equal to the bit (the draws:
    wherever ATen's normal sampler is vectorised; see oracle.DRAW_REL)."""
    model, fx = fixture_model(name), fixture(name)
    derived = fx.cases[case]["derived"]
    state = model.start(params_of(fx, case))
    assert state.window.audio_samples == derived["audio_sample_size"]
    assert state.window.latent_length == derived["latent_length"]
    assert state.window.valid_frames == derived["valid_latent_length"]
    assert np.array_equal(state.padding_mask.numpy(), fx.array(case, "padding_mask"))
    assert maxdiff(state.sigmas, fx.array(case, "sigmas")) == 0.0
    if not fx.cases[case]["init_audio"]:
        oracle.assert_draws(state.x, fx.array(case, "initial_noise"), "initial noise")  # the seed's first draw
    noises = []
    while not state.finished:
        model.step([state])
        noises.append(state.noise.clone())
    oracle.assert_draws(torch.stack(noises), fx.array(case, "step_noises"), "step noises")


@needs_fixtures
@pytest.mark.parametrize("name", ["small-tiny", "medium-tiny"])
def test_norm_eps_are_stabilitys(name):
    """Every DiT RMSNorm carries the eps Stability's code gives it: the config's, else its class defaults (1e-5 for
    the block norms, 1e-6 for the q/k norms). A config value, exact on every CPU, so pinned here: an eps off by 10x
    moves one DiT call by only ~1e-5 of scale (measured with `./run mutants eps`: 8e-6 and 1e-5), below the
    cross-CPU step tolerance, so the numeric stages alone cannot tell it from another CPU's rounding."""
    import json

    from stable_audio_service.models.stable_audio_3.dit import RMSNorm

    config = json.loads((fixture(name).folder / "model_config.json").read_text())
    dit = config["model"]["diffusion"]["config"]
    block_eps = dit.get("norm_kwargs", {}).get("eps", 1e-5)
    qk_eps = dit.get("attn_kwargs", {}).get("qk_norm_eps", 1e-6)
    norms = {n: m.eps for n, m in fixture_model(name).dit.named_modules() if isinstance(m, RMSNorm)}
    qk = {n: e for n, e in norms.items() if n.endswith(("q_norm", "k_norm"))}
    blocks = {n: e for n, e in norms.items() if n not in qk}
    assert blocks and set(blocks.values()) == {block_eps}
    assert not qk or set(qk.values()) == {qk_eps}


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES)
def test_text_and_conditioning_stage(name, case):
    model, fx = fixture_model(name), fixture(name)
    state = model.start(params_of(fx, case))
    text = fx.array(case, "text_embeds_valid")
    assert_rel(state.context[:, : text.shape[1]], text, oracle.TEXT_REL, "T5Gemma rows")
    assert_rel(state.context[:, -1], fx.array(case, "duration_token"), oracle.COND_REL, "duration token")
    assert_rel(state.global_cond, fx.array(case, "global_cond"), oracle.COND_REL, "global conditioning")
    assert_rel(state.local_cond, fx.array(case, "local_add_cond"), oracle.COND_REL, "local conditioning")
    if fx.has(case, "negative_text_embeds_valid"):
        negative = fx.array(case, "negative_text_embeds_valid")
        assert_rel(state.uncond_context[:, : negative.shape[1]], negative, oracle.TEXT_REL, "negative prompt rows")
        assert not state.uncond_context[:, negative.shape[1] : -1].any(), "a negative prompt's padded rows are zero"
    elif fx.cases[case]["generate_kwargs"]["cfg_scale"] != 1:
        assert not state.uncond_context.any(), "the null context is all zeros, duration token included"


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), STEP_CASES)
def test_one_dit_call_per_step_fed_the_official_latents(name, case):
    """Each step's prediction from the latents the official sampler had at that step (rebuilt from its stored
    predictions and draws): one DiT call (with guidance) is not chaotic, so the tolerance stays tight."""
    model, fx = fixture_model(name), fixture(name)
    state = model.start(params_of(fx, case))
    inputs, denoised = fx.step_inputs(case), fx.array(case, "denoised_per_step")
    for i in range(len(denoised)):
        if i > 0:
            state.x = inputs[i - 1].clone()
        model.step([state])
        assert_rel(state.denoised, denoised[i], oracle.STEP_REL, f"step {i}")


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES)
def test_decode_stage_fed_the_official_latents_and_draws(name, case):
    """`finish` (decode with the request's decode-time draws, padded frames zeroed, clamp, cut) from the official
    final latents and a generator at the official position: the decode draws are the stored ones."""
    model, fx = fixture_model(name), fixture(name)
    state = model.start(params_of(fx, case))
    state.x = torch.from_numpy(fx.array(case, "latents")).clone()
    state.generator = oracle.seeded_generator(fx, case)
    state.step = state.total_steps
    audio = fx.array(case, "audio")[0]
    assert_rel(model.finish(state), audio, oracle.DECODE_REL, "decoded audio")


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES)
def test_end_to_end_within_the_oracles_own_spread(name, case):
    """The whole chain from the seed: final latents and audio within a small multiple of how far Stability's own
    library moved this case between two CPU hosts."""
    model, fx = fixture_model(name), fixture(name)
    _, latents, audio = run(model, params_of(fx, case))
    assert audio.dtype == np.float32
    assert maxdiff(latents, fx.array(case, "latents")) <= fx.e2e_tol(case, "latents")
    assert maxdiff(audio, fx.array(case, "audio")[0]) <= fx.e2e_tol(case, "audio")


@needs_fixtures
@pytest.mark.parametrize("name", NAMES)
def test_sampler_given_the_official_source_latents(name, monkeypatch):
    """a2a and inpainting fed the official source latents (the encode stage is checked on its own in
    test_sa3_autoencoder): the sampler's chain within the case's cross-host spread."""
    model, fx = fixture_model(name), fixture(name)
    for case, latents_key in (("a2a_1s", "init_latents"), ("inpaint_1s", "inpaint_latents")):
        official = torch.from_numpy(fx.array(case, latents_key))
        monkeypatch.setattr(model, "_encode_source", lambda *args, official=official, **kw: official.clone())
        _, latents, _ = run(model, params_of(fx, case))
        assert maxdiff(latents, fx.array(case, "latents")) <= fx.e2e_tol(case, "latents"), case


@needs_fixtures
def test_inpainting_returns_the_source_outside_the_regions():
    model, fx = fixture_model("small-tiny", SA3Options(keep_inpaint_source=True)), fixture("small-tiny")
    params = params_of(fx, "inpaint_1s")
    state = model.start(params)
    params.drop_uploads()  # the engine frees uploads once they are encoded; the kept audio must survive that
    while not state.finished:
        model.step([state])
    audio = model.finish(state)
    source, official = fx.array("inpaint_1s", "input_audio"), fx.array("inpaint_1s", "audio")[0]
    lo, hi = int(0.3 * 44100), int(0.6 * 44100)
    assert np.array_equal(audio[:, :lo], np.clip(source[:, :lo], -1, 1))
    assert np.array_equal(audio[:, hi:], np.clip(source[:, hi:], -1, 1))
    assert maxdiff(audio[:, lo:hi], official[:, lo:hi]) <= fx.e2e_tol("inpaint_1s", "audio")


@needs_fixtures
def test_batched_equals_solo():
    """Three requests with different prompts, seeds and guidance (APG, vanilla CFG with a negative prompt,
    inpainting) in one forward per step give exactly their solo results; each keeps its own draws."""
    model, fx = fixture_model("small-tiny"), fixture("small-tiny")
    requests = [
        params_of(fx, "inpaint_1s"),
        GenerationParams(prompt="A gentle piano", duration=0.9, guidance_scale=7.0, num_inference_steps=8, seed=5),
        GenerationParams(
            prompt="tech house",
            duration=1.0,
            guidance_scale=4.0,
            num_inference_steps=8,
            seed=3,
            negative_prompt="distorted",
            apg_scale=0.0,
        ),
    ]
    assert len({model.batch_key(p) for p in requests}) == 1
    solo = [run(model, p) for p in requests]
    states = [model.start(p) for p in requests]
    while not states[0].finished:
        model.step(states)
    for (_, latents, audio), state in zip(solo, states, strict=True):
        assert torch.equal(state.x, latents)
        assert np.array_equal(model.finish(state), audio)
    # the batch did not change the oracle case
    assert maxdiff(solo[0][1], fx.array("inpaint_1s", "latents")) <= fx.e2e_tol("inpaint_1s", "latents")


def test_batch_key_is_latent_length(tmp_path_factory):
    model = tiny_model(tmp_path_factory, "small")

    def key(duration: float, steps: int = 8) -> object:
        return model.batch_key(
            GenerationParams(prompt="x", duration=duration, guidance_scale=1, num_inference_steps=steps, seed=0)
        )

    assert key(0.9) == key(1.0)  # both 76 latents (7 s window rounded to an even number of frames)
    assert key(1.0) != key(4.0)
    assert key(1.0) == key(1.0, steps=9)  # per-row schedules: step counts share a forward pass


def test_continuation_regenerates_past_the_source():
    """A duration longer than the source regenerates everything after it, as if that region had been asked."""
    win = sampling.window(3.0, sample_rate=44100, hop=4096, latent_align=2, sample_size=5292032, padding_s=6.0)
    continued = sampling.inpaint_latent_mask(win, [], 44100, sample_rate=44100, duration=3.0)
    asked = sampling.inpaint_latent_mask(win, [(1.0, 3.0)], win.audio_samples, sample_rate=44100, duration=3.0)
    assert torch.equal(continued, asked)
    assert continued[0, 0, :10].all() and not continued[0, 0, 11:].any()


def test_window_follows_generate_sizes():
    """Real sizes: the 6 s padding, the even latent length, and the window clamped to sample_size (small 120 s)."""
    win = sampling.window(1.5, sample_rate=44100, hop=4096, latent_align=2, sample_size=5292032, padding_s=6.0)
    assert (win.latent_length, win.valid_frames, win.output_samples) == (82, 81, 66150)
    longest = sampling.window(120.0, sample_rate=44100, hop=4096, latent_align=2, sample_size=5292032, padding_s=6.0)
    assert longest.audio_samples == 5292032 and longest.valid_frames == longest.latent_length == 1292


# -- checkpoint errors -----------------------------------------------------------------------------------


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def tiny_small(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("sa3") / "tiny-sa3-small", family="sa3", structure="small")


@pytest.mark.parametrize(
    ("remove", "says"),
    [
        ("t5gemma-b-b-ul2/tokenizer.json", "tokenizer"),
        ("t5gemma-b-b-ul2/model.safetensors", "text encoder weights"),
        ("t5gemma-b-b-ul2/config.json", "text encoder config"),
        ("model.safetensors", "model.safetensors"),
        ("model_config.json", "model_config.json"),
    ],
)
def test_incomplete_checkpoint_names_what_is_missing(tiny_small, tmp_path, remove, says):
    path = _copy_checkpoint(tiny_small, tmp_path / "ckpt")
    (path / remove).unlink()
    with pytest.raises(ModelLoadError) as err:
        StableAudio3Model.from_checkpoint(path, name="x", device="cpu", dtype=torch.float32)
    message = str(err.value)
    assert says in message and str(path) in message and "huggingface" in message.lower()


def test_missing_text_encoder_folder_is_one_clear_error(tiny_small, tmp_path):
    path = _copy_checkpoint(tiny_small, tmp_path / "ckpt")
    shutil.rmtree(path / "t5gemma-b-b-ul2")
    with pytest.raises(ModelLoadError, match="T5Gemma text encoder"):
        StableAudio3Model.from_checkpoint(path, name="x", device="cpu", dtype=torch.float32)


# -- the official-format tiny model -------------------------------------------------------------------------

_TINY: dict[str, StableAudio3Model] = {}


def tiny_model(tmp_path_factory, structure: str) -> StableAudio3Model:
    if structure not in _TINY:
        path = make_tiny(tmp_path_factory.mktemp("sa3") / f"tiny-{structure}", family="sa3", structure=structure)
        _TINY[structure] = StableAudio3Model.from_checkpoint(
            path, name=f"tiny-{structure}", device="cpu", dtype=torch.float32
        )
    return _TINY[structure]


@pytest.mark.parametrize(("structure", "longest"), [("small", 120.0), ("medium", 380.0)])
def test_make_tiny_sa3_loads_and_generates(tmp_path_factory, structure, longest):
    model = tiny_model(tmp_path_factory, structure)
    assert model.config.structure == structure
    assert model.limits.duration.maximum == longest and model.limits.num_inference_steps.default == 8
    params = GenerationParams(
        prompt="rain on a tin roof", duration=0.5, guidance_scale=3, num_inference_steps=3, seed=1
    )
    _, latents, audio = run(model, params)
    assert audio.shape == (2, 22050) and audio.dtype == np.float32
    assert np.isfinite(audio).all() and 0 < np.abs(audio).max() <= 1
    _, again, _ = run(model, params)
    assert torch.equal(latents, again)  # the seed decides everything
    other = GenerationParams(prompt="birds in a forest", duration=0.5, guidance_scale=3, num_inference_steps=3, seed=1)
    assert not torch.equal(run(model, other)[1], latents)  # the prompt reaches the DiT


def test_limits_for_base_checkpoints_and_operator_cap(tmp_path_factory):
    config = tiny_model(tmp_path_factory, "small").config
    post = sa3_limits(config, "stabilityai/stable-audio-3-small-music")
    base = sa3_limits(config, "stabilityai/stable-audio-3-small-music-base", max_duration=30)
    assert (post.guidance_scale.default, post.num_inference_steps.default) == (1.0, 8)
    assert (base.guidance_scale.default, base.num_inference_steps.default) == (7.0, 50)
    assert base.duration.maximum == 30 and post.duration.minimum == 0.1


def test_memory_estimate_grows_with_clip_and_dtype(tiny_small):
    from stable_audio_service.models.stable_audio_3.family import count_parameters, memory_estimate

    parts = count_parameters(tiny_small)
    assert parts["dit"] > 0 and parts["autoencoder"] > 0 and parts["text_encoder"] > 0
    w32, short = memory_estimate(tiny_small, torch.float32, 10)
    w16, _ = memory_estimate(tiny_small, torch.float16, 10)
    _, long = memory_estimate(tiny_small, torch.float32, 120)
    assert long > short and w16 < w32
    # the text encoder stays float32 whatever the serving dtype
    assert w32 - w16 == (parts["dit"] + parts["autoencoder"] + parts["conditioners"]) * 2


def test_memory_estimate_counts_the_request_caches(tiny_small, monkeypatch):
    from stable_audio_service.models.stable_audio_3 import family

    _, cached = family.memory_estimate(tiny_small, torch.float32, 10)
    monkeypatch.setattr(family, "LOCAL_EMBED_CACHE_BYTES", 0)  # no local-embedding cache: less working memory
    _, uncached = family.memory_estimate(tiny_small, torch.float32, 10)
    assert cached > uncached
