"""Stable Audio 3 served in float16 against Stability's half-precision path: `load_diffusion_cond(...,
model_half=True)`, whose outputs for every case of cases.json are `reference-fp16.npz` in the oracle fixtures.

`model.to(float16)` does not make everything float16, and the service must keep the same islands and casts:
T5Gemma stays float32 (the conditioner keeps it outside the module tree); the duration is normalised in float32
and cast to float16 before its Fourier features; the DiT keeps t in float32 but casts the timestep to float16
before its Fourier features, and rotates q/k in float32 with float16 RoPE frequencies; the sampler's latents are
float16, its re-noising draws are made in the latents' dtype, and guidance multiplies float16 predictions by a
float32 sigma, which makes a guided prediction (and every later latent) float32; the decode is float16.

Float16 end to end is chaotic (`cross-kernel-fp16.json`: Stability's own audio moves by up to 0.43 when only
ATen's kernels change), so the proof is stage-wise, as in test_sa3_official: what the cast map makes exact is
pinned bitwise (dtypes, the re-noising arithmetic, float16-valued audio), each stage fed the official inputs of
that stage is compared with a tolerance relative to its scale (tests/oracle.py, FP16_*: measured figures and the
mistakes each one catches), and the whole chain only within a multiple of the cross-kernel spread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stable_audio_service.config import Settings
from stable_audio_service.models.stable_audio_3 import sampling
from stable_audio_service.models.stable_audio_3.accel import SA3Options
from stable_audio_service.models.stable_audio_3.family import StableAudio3Model

from . import oracle
from .conftest import serve
from .oracle import (
    FIXTURES,
    maxdiff,
    params_of,
    with_oracle_threads,  # noqa: F401 (autouse: this module's torch threads)
)

NAMES = ("medium-tiny", "small-tiny")
REFERENCE = "reference-fp16.npz"


def _cases(name: str) -> list[str]:
    """The fixture's cases when it has a float16 reference ([] when the fixtures are absent)."""
    return oracle.fixture_cases(name) if (FIXTURES / name / REFERENCE).is_file() else []


CASES = [(name, case) for name in NAMES for case in _cases(name)] or [("none", "none")]
needs_fixtures = pytest.mark.skipif(
    not all((FIXTURES / name / REFERENCE).is_file() for name in NAMES),
    reason=f"{FIXTURES}/*/{REFERENCE} is absent (the oracle fixtures live beside the repository, in CI)",
)


_MODELS: dict[str, StableAudio3Model] = {}


def half_model(name: str) -> StableAudio3Model:
    """The fixture checkpoint served in float16, returning exactly what Stability's generate() returns."""
    if name not in _MODELS:
        _MODELS[name] = StableAudio3Model.from_checkpoint(
            FIXTURES / name,
            name=name,
            device="cpu",
            dtype=torch.float16,
            text_cache_size=16,
            options=SA3Options(keep_inpaint_source=False),
        )
    return _MODELS[name]


def half_ref(name: str) -> oracle.Fixture:
    return oracle.fixture(name, REFERENCE)


def request(name: str, case: str):
    """The case's request (its uploads come from the float32 reference, which stores them)."""
    return params_of(oracle.fixture(name), case)


def guided(name: str, case: str) -> bool:
    return half_ref(name).cases[case]["generate_kwargs"].get("cfg_scale", 1.0) != 1.0


def assert_rel(ours, ref, rel: float, what: str) -> None:
    ok, message = oracle.close_rel(ours, ref, rel)
    assert ok, f"{what}: {message}"


def assert_sampler_exact(ours: torch.Tensor, ref: np.ndarray, what: str) -> None:
    """Bitwise where the request's draws are (see oracle.DRAWS_BITWISE), else within a float16 ulp of them."""
    ok, message = oracle.close_rel(ours, ref, oracle.FP16_DRAW_REL)
    assert ok, f"{what}: {message}"


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES)
def test_sampler_dtypes_and_renoising_are_the_official_ones(name, case):
    """The exact part of each step, fed the official latents: the latents start as the float32 draw cast to
    float16; an unguided step keeps float16 (prediction, draw, next latents), a guided one gives a float32
    prediction and float32 latents from then on; and the next latents computed from the official prediction with
    this request's draw are the official next latents, to the bit (float16 rounding of `1 - t` included)."""
    model, ref = half_model(name), half_ref(name)
    xs, denoised = ref.array(case, "x_per_step"), ref.array(case, "denoised_per_step")
    state = model.start(request(name, case))
    assert state.x.dtype == torch.float16
    if not ref.cases[case]["init_audio"]:  # audio-to-audio mixes in the encoded source (a stage of its own)
        assert_sampler_exact(state.x, xs[0], "initial latents")
    promoted = torch.float32 if guided(name, case) else torch.float16
    for i in range(len(denoised)):
        state.x = torch.from_numpy(xs[i]).to(state.x.dtype)
        latents_dtype = state.x.dtype
        model.step([state])
        assert state.noise.dtype == latents_dtype, f"step {i}: the draw is made in the latents' dtype"
        assert state.denoised.dtype == promoted, f"step {i}: prediction dtype"
        assert state.x.dtype == promoted, f"step {i}: next latents dtype"
        if i + 1 < len(denoised):
            official = torch.from_numpy(denoised[i]).to(state.denoised.dtype)
            nxt = sampling.renoise(official, state.sigmas[:, i + 1].to(latents_dtype), state.noise)
            assert_sampler_exact(nxt, xs[i + 1], f"latents after step {i}")


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES)
def test_one_dit_call_per_step_fed_the_official_latents(name, case):
    """Each step's prediction (one DiT call, guidance included) from the latents the official sampler fed its DiT
    at that step: within a few float16 ulps of the prediction's scale, where a wrong cast moves it far more."""
    model, ref = half_model(name), half_ref(name)
    xs, denoised = ref.array(case, "x_per_step"), ref.array(case, "denoised_per_step")
    rel = oracle.FP16_GUIDED_STEP_REL if guided(name, case) else oracle.FP16_STEP_REL
    state = model.start(request(name, case))
    for i in range(len(denoised)):
        state.x = torch.from_numpy(xs[i]).to(state.x.dtype)
        model.step([state])
        assert_rel(state.denoised, denoised[i], rel, f"step {i}")


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES)
def test_decode_stage_fed_the_official_latents_and_draws(name, case):
    """`finish` from the official final latents with the request's generator at the official position: the
    float16 decode (its draws made in float16) within the stage tolerance, and every sample a float16 number (the
    official decode is float16 throughout; a float32 decode would not be)."""
    model, ref = half_model(name), half_ref(name)
    state = model.start(request(name, case))
    state.x = torch.from_numpy(ref.array(case, "latents")).to(torch.float16)
    state.generator = oracle.seeded_generator(ref, case)
    state.step = state.total_steps
    audio = model.finish(state)
    assert audio.dtype == np.float32
    assert np.array_equal(audio.astype(np.float16).astype(np.float32), audio), "decoded samples are float16 values"
    assert_rel(audio, ref.array(case, "audio")[0], oracle.FP16_DECODE_REL, "decoded audio")


def _cross_kernel(name: str) -> dict[str, dict]:
    return json.loads((FIXTURES / name / "cross-kernel-fp16.json").read_text())["arrays"]


def fp16_e2e_tol(name: str, case: str, array: str) -> float:
    """A multiple of how far Stability's own float16 output moved when only ATen's kernels changed, with a floor."""
    spread = float(_cross_kernel(name)[f"{case}__{array}"]["max_abs_diff"])
    scale = oracle.scale(half_ref(name).array(case, array))
    return max(oracle.FP16_SPREAD_MULTIPLE * spread, oracle.FP16_FLOOR_REL * scale)


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES)
def test_end_to_end_within_a_multiple_of_the_cross_kernel_spread(name, case):
    """The whole chain from the seed: final latents and audio within a small multiple of how far Stability's own
    float16 path moves this case on one host when only the kernels change (loose by nature: float16 is chaotic)."""
    model, ref = half_model(name), half_ref(name)
    state = model.start(request(name, case))
    while not state.finished:
        model.step([state])
    latents = state.x.float().clone()
    audio = model.finish(state)
    assert maxdiff(latents, ref.array(case, "latents")) <= fp16_e2e_tol(name, case, "latents")
    assert maxdiff(audio, ref.array(case, "audio")[0]) <= fp16_e2e_tol(name, case, "audio")


@needs_fixtures
def test_text_encoder_stays_float32():
    """`model_half` does not reach T5Gemma: the prompt rows of a float16 model are the float32 ones (the DiT casts
    them to float16 itself), within the float32 text stage's tolerance."""
    model, fx = half_model("small-tiny"), oracle.fixture("small-tiny")
    case = "t2a_4s_cfg1"
    state = model.start(request("small-tiny", case))
    text = fx.array(case, "text_embeds_valid")
    assert state.context.dtype == torch.float32
    assert_rel(state.context[:, : text.shape[1]], text, oracle.TEXT_REL, "T5Gemma rows")


@needs_fixtures
def test_served_dtype_is_reported():
    """STABLE_AUDIO_DTYPE=float16 through the service's load path: GET /models reports the dtype the DiT and the
    autoencoder actually hold, and that the text encoder keeps float32."""
    settings = Settings(
        model=str(FIXTURES / "small-tiny"), device="cpu", dtype="float16", threads=1, skip_memory_check=True
    )
    client = serve(settings)
    try:
        info = client.get("/models").json()
        model = client.app.state.service.engine.model
    finally:
        client.__exit__(None, None, None)
        torch.set_num_threads(oracle.oracle_threads())
    assert info["dtype"] == "float16" == model.dtype
    assert next(model.dit.parameters()).dtype == torch.float16
    assert next(model.autoencoder.parameters()).dtype == torch.float16
    assert info["text_encoder_dtype"] == "float32"


@needs_fixtures
def test_backend_flags_are_the_official_ones():
    """Stability's `StableAudioModel` sets these for the process when it is built; on CUDA they decide how float16
    matmuls accumulate (and whether float32 convolutions use TF32), so a loaded model sets them too."""
    half_model("small-tiny")
    assert torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.benchmark is False
