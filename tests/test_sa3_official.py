"""Stable Audio 3 through `StableAudio3Model` against Stability's own library (the oracle fixtures in
../shared/fixtures/sa3-official), plus batching, checkpoint errors and the official-format tiny model.

Every fixture case runs from the seed as the engine runs it (from_checkpoint -> start -> step x N -> finish) and
must give the official final latents and audio within 1e-4; the intermediate arrays (text rows, duration
embedding, schedule, padding mask, draws, per-step predictions) are compared too, so a failure says where.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stable_audio_service.models.base import GenerationParams
from stable_audio_service.models.loading import ModelLoadError
from stable_audio_service.models.stable_audio_3 import sampling
from stable_audio_service.models.stable_audio_3.family import StableAudio3Model, sa3_limits
from stable_audio_service.models.tiny import make_tiny

from .oracle import request_fields

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "sa3-official"
NAMES = ("medium-tiny", "small-tiny")
TOL = 1e-4


def _cases(name: str) -> list[dict]:
    path = FIXTURES / name / "cases.json"
    return json.loads(path.read_text())["cases"] if path.is_file() else []


CASES = [(name, case["name"]) for name in NAMES for case in _cases(name)] or [("none", "none")]
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"{FIXTURES} is absent (the oracle fixtures live beside the repository, in CI)"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The fixtures are tiny: one thread is several times faster than two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_MODELS: dict[str, StableAudio3Model] = {}


def fixture_model(name: str) -> StableAudio3Model:
    if name not in _MODELS:
        _MODELS[name] = StableAudio3Model.from_checkpoint(
            FIXTURES / name, name=name, device="cpu", dtype=torch.float32, text_cache_size=16
        )
    return _MODELS[name]


def reference(name: str):
    return np.load(FIXTURES / name / "reference.npz")


def case_of(name: str, case_name: str) -> dict:
    return next(c for c in _cases(name) if c["name"] == case_name)


def params_of(case: dict, ref) -> GenerationParams:
    """The request a service client would send for this `generate()` call."""
    g = case["generate_kwargs"]
    fields = request_fields(case)
    fields.pop("init_noise_level", None)  # set below with the source it belongs to
    params = GenerationParams(**fields)
    if case["init_audio"]:
        params.init_audio = ref[f"{case['name']}__input_audio"]
        params.init_noise_level = g["init_noise_level"]
    if case["inpaint_audio"]:
        params.inpaint_audio = ref[f"{case['name']}__input_audio"]
        params.inpaint_regions = [(g["inpaint_mask_start_seconds"], g["inpaint_mask_end_seconds"])]
    return params


def maxdiff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.abs(a - b).max())


def run(model: StableAudio3Model, params: GenerationParams, on_step=None):
    state = model.start(params)
    while not state.finished:
        model.step([state])
        if on_step is not None:
            on_step(state)
    latents = state.x.clone()
    return state, latents, model.finish(state)


@needs_fixtures
@pytest.mark.parametrize(("fixture", "case_name"), CASES)
def test_fixture_case_reproduces_official(fixture, case_name):
    model = fixture_model(fixture)
    model.keep_inpaint_source = False  # compare with exactly what Stability's generate() returns
    case, ref = case_of(fixture, case_name), reference(fixture)
    key = f"{case_name}__".__add__
    derived = case["derived"]

    state = model.start(params_of(case, ref))
    # sizes, mask and schedule
    assert state.window.audio_samples == derived["audio_sample_size"]
    assert state.window.latent_length == derived["latent_length"]
    assert state.window.valid_frames == derived["valid_latent_length"]
    assert np.array_equal(state.padding_mask.numpy(), ref[key("padding_mask")])
    assert maxdiff(state.sigmas, ref[key("sigmas")]) == 0.0
    # conditioning
    n_text = ref[key("text_embeds_valid")].shape[1]
    assert maxdiff(state.context[:, :n_text], ref[key("text_embeds_valid")]) <= 1e-6
    assert maxdiff(state.context[:, -1], ref[key("duration_token")]) <= 1e-6
    assert maxdiff(state.global_cond, ref[key("global_cond")]) <= 1e-6
    assert maxdiff(state.local_cond, ref[key("local_add_cond")]) <= 1e-5
    if key("negative_text_embeds_valid") in ref.files:
        n_neg = ref[key("negative_text_embeds_valid")].shape[1]
        assert maxdiff(state.uncond_context[:, :n_neg], ref[key("negative_text_embeds_valid")]) <= 1e-6
        assert not state.uncond_context[:, n_neg:-1].any(), "a negative prompt's padded rows must be zero"
    elif case["generate_kwargs"]["cfg_scale"] != 1:
        assert not state.uncond_context.any(), "the null context is all zeros, duration token included"
    if not case["init_audio"]:
        assert maxdiff(state.x, ref[key("initial_noise")]) == 0.0  # the seed's first draw

    denoised, noises = [], []
    while not state.finished:
        model.step([state])
        denoised.append(state.denoised.clone())
        noises.append(state.noise.clone())
    assert maxdiff(torch.stack(noises), ref[key("step_noises")]) == 0.0
    if key("denoised_per_step") in ref.files:
        assert maxdiff(torch.stack(denoised), ref[key("denoised_per_step")]) <= TOL
    assert maxdiff(state.x, ref[key("latents")]) <= TOL
    audio = model.finish(state)
    assert audio.dtype == np.float32
    assert maxdiff(audio, ref[key("audio")][0]) <= TOL


@needs_fixtures
@pytest.mark.parametrize("fixture", NAMES)
def test_sampler_is_exact_given_the_official_source_latents(fixture, monkeypatch):
    """a2a and inpainting differ from the oracle only through the autoencoder's encode (~1 ulp, which the
    random-weight sampler amplifies to ~1e-5); fed the official source latents, the sampler is exact."""
    model, ref = fixture_model(fixture), reference(fixture)
    for case_name, latents_key in (("a2a_1s", "init_latents"), ("inpaint_1s", "inpaint_latents")):
        official = torch.from_numpy(ref[f"{case_name}__{latents_key}"])
        monkeypatch.setattr(model, "_encode_source", lambda audio, win, official=official: official.clone())
        _, latents, _ = run(model, params_of(case_of(fixture, case_name), ref))
        assert maxdiff(latents, ref[f"{case_name}__latents"]) <= 1e-6, case_name


@needs_fixtures
def test_inpainting_returns_the_source_outside_the_regions():
    model, ref = fixture_model("small-tiny"), reference("small-tiny")
    model.keep_inpaint_source = True
    params = params_of(case_of("small-tiny", "inpaint_1s"), ref)
    state = model.start(params)
    params.drop_uploads()  # the engine frees uploads once they are encoded; the kept audio must survive that
    while not state.finished:
        model.step([state])
    audio = model.finish(state)
    source, official = ref["inpaint_1s__input_audio"], ref["inpaint_1s__audio"][0]
    lo, hi = int(0.3 * 44100), int(0.6 * 44100)
    assert np.array_equal(audio[:, :lo], np.clip(source[:, :lo], -1, 1))
    assert np.array_equal(audio[:, hi:], np.clip(source[:, hi:], -1, 1))
    assert maxdiff(audio[:, lo:hi], official[:, lo:hi]) <= TOL


@needs_fixtures
def test_batched_equals_solo():
    """Three requests with different prompts, seeds and guidance (APG, vanilla CFG with a negative prompt,
    inpainting) in one forward per step give exactly their solo results; each keeps its own draws."""
    model, ref = fixture_model("small-tiny"), reference("small-tiny")
    model.keep_inpaint_source = False
    requests = [
        params_of(case_of("small-tiny", "inpaint_1s"), ref),
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
    assert maxdiff(solo[0][1], ref["inpaint_1s__latents"]) <= TOL  # the batch did not change the oracle case


def test_batch_key_is_latent_length(tmp_path_factory):
    model = tiny_model(tmp_path_factory, "small")

    def key(duration: float, steps: int = 8) -> object:
        return model.batch_key(
            GenerationParams(prompt="x", duration=duration, guidance_scale=1, num_inference_steps=steps, seed=0)
        )

    assert key(0.9) == key(1.0)  # both 76 latents (7 s window rounded to an even number of frames)
    assert key(1.0) != key(4.0)
    assert key(1.0) == key(1.0, steps=9)  # per-row schedules: step counts share a forward pass (issue 12)


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
