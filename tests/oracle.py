"""The Stable Audio 3 oracle fixtures (../shared/fixtures/sa3-official) as tests use them: cases as this service's
requests, the official inputs of each stage, and tolerances that hold on every CPU.

Why tolerances live here: Stability's own library is not bit-stable across CPUs (the fixtures' README: AVX2 against
AVX-512 moves guided latents by up to 6e-3). So the tests pin exact equality only where every CPU computes the same
thing (sizes, masks, schedules, RNG draws, token ids) and compare everything else either one stage at a time, fed
the official inputs of that stage (tight: one stage is not chaotic), or end to end with a per-case tolerance
derived from the oracle's own spread between two hosts (`cross-host.json`).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "sa3-official"

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

# -- stage tolerances, relative to the reference array's max |value| -------------------------------------------
# Measured with `python -m tests.portability` on a 2-core AMD EPYC (Zen 4: AVX-512, VNNI, BF16) under
# ATEN_CPU_CAPABILITY default / avx2 / avx512 and 1 / 2 threads, and between Stability's two hosts (cross-host.json);
# each tolerance is the largest figure times a margin of ~8, and `./run mutants` shows each still catches mistakes.
#
# T5Gemma text rows: at most 1.0e-6 relative here (default kernels); cross-host 6.4e-6 / 4.55 = 1.4e-6.
TEXT_REL = 1e-5
# Conditioning vectors (duration token, global and local conditioning): 0 here; cross-host 7.2e-7 / 2.24 = 3.2e-7.
COND_REL = 4e-6
# One DiT call (one sampler step, guidance included) fed the official input latents of that step: at most 3.9e-6
# relative here. A single call is not chaotic; eight chained calls reach 1.8e-5 cross-host at guidance 1.
STEP_REL = 3e-5
# The SAME decode fed the official latents and decode-noise draws: at most 8.4e-7 relative here.
DECODE_REL = 1e-5

# -- RNG draws ------------------------------------------------------------------------------------------------
# A seed's draws are bitwise the same on every CPU whose ATen has a vectorised normal sampler (AVX2, AVX-512: the
# fixtures' hosts and this service's). The portable kernel (ATEN_CPU_CAPABILITY=default) evaluates Box-Muller's
# log/sin/cos with libm instead of Sleef: the same stream to within 1.6e-6 (measured: ~4e-7 of the draws' scale).
DRAWS_BITWISE = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
DRAW_REL = 0.0 if DRAWS_BITWISE else 2e-6


def assert_draws(ours: Any, ref: Any, what: str = "draw") -> None:
    """A seed's draws: bitwise where the normal sampler is vectorised, else within a few ulps (see DRAW_REL)."""
    ok, message = close_rel(ours, ref, DRAW_REL)
    assert ok, f"{what}: {message}"


# -- end-to-end tolerances from the oracle's own cross-host spread ------------------------------------------------
# The whole chain (text -> 8 DiT calls -> decode) amplifies round-off, more with strong guidance. A case's
# end-to-end tolerance is SPREAD_MULTIPLE times the largest spread Stability's library showed for that array between
# its two hosts (cross-host.json), with a floor of FLOOR_REL of the array's scale for arrays whose spread is ~0.
# Measured here: at most 1.02x the spread under any kernel setting (audio, default kernels).
SPREAD_MULTIPLE = 4.0
FLOOR_REL = 2e-5
# 16-bit PCM (WAV through HTTP): libsndfile writes round(x * 32767) and reads / 32768, a few LSB on top.
PCM16 = 4 / 32768


def request_fields(case: dict) -> dict[str, Any]:
    """The scalar request fields of a case's `generate_kwargs` (audio inputs and adapters are the caller's)."""
    g = case["generate_kwargs"]
    return {ours: g[theirs] for theirs, ours in _FIELDS.items() if theirs in g}


def maxdiff(a: Any, b: Any) -> float:
    """max |a - b| in float64, after checking the shapes agree (a broadcast would hide a wrong size)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.abs(a - b).max()) if a.size else 0.0


def scale(a: Any) -> float:
    """max |value| of an array (the unit of a relative tolerance); never 0."""
    a = np.asarray(a, dtype=np.float64)
    return max(float(np.abs(a).max()) if a.size else 0.0, 1e-12)


def close_rel(ours: Any, ref: Any, rel: float) -> tuple[bool, str]:
    """(max |ours - ref| <= rel * scale(ref), a message with the figures) for an assert."""
    diff, unit = maxdiff(ours, ref), scale(ref)
    return diff <= rel * unit, f"max |diff| {diff:.3g} > {rel:g} x scale {unit:.3g} = {rel * unit:.3g}"


def _kind(key: str) -> str:
    """The array's name without its case: `t2a_4s_cfg7__latents` -> `latents`."""
    return key.split("__", 1)[1]


@cache
def _cross_host(folder: Path) -> dict[str, dict]:
    path = folder / "cross-host.json"
    return json.loads(path.read_text())["arrays"] if path.is_file() else {}


@cache
def _fallback_spreads() -> dict[tuple[str, bool], float]:
    """For a fixture without cross-host.json: the largest spread of each array kind over every fixture that has
    one, separately for guided (cfg > 1) and unguided cases (guidance amplifies round-off ~30x)."""
    spreads: dict[tuple[str, bool], float] = {}
    for folder in sorted(FIXTURES.glob("*/cross-host.json")):
        cases = {c["name"]: c for c in json.loads((folder.parent / "cases.json").read_text())["cases"]}
        for key, entry in _cross_host(folder.parent).items():
            name = key.split("__", 1)[0]
            if name not in cases or "max_abs_diff" not in entry:
                continue
            guided = cases[name]["generate_kwargs"].get("cfg_scale", 1.0) != 1.0
            slot = (_kind(key), guided)
            spreads[slot] = max(spreads.get(slot, 0.0), float(entry["max_abs_diff"]))
    return spreads


class Fixture:
    """One oracle folder: its cases, reference arrays and cross-host spreads."""

    def __init__(self, name: str, reference: str = "reference.npz") -> None:
        self.name = name
        self.folder = FIXTURES / name
        self.cases = {c["name"]: c for c in json.loads((self.folder / "cases.json").read_text())["cases"]}
        self.ref = np.load(self.folder / reference)

    def has(self, case: str, array: str) -> bool:
        return f"{case}__{array}" in self.ref.files

    def array(self, case: str, array: str) -> np.ndarray:
        return self.ref[f"{case}__{array}"]

    def spread(self, case: str, array: str) -> float:
        """How far Stability's library moved this array between two CPU hosts (measured, or the largest spread
        of the same kind of array in the fixtures that measured it)."""
        entry = _cross_host(self.folder).get(f"{case}__{array}")
        if entry is not None and "max_abs_diff" in entry:
            return float(entry["max_abs_diff"])
        guided = self.cases[case]["generate_kwargs"].get("cfg_scale", 1.0) != 1.0
        fallback = _fallback_spreads()
        return fallback.get((array, guided), fallback.get((array, True), 0.0))

    def e2e_tol(self, case: str, array: str) -> float:
        """The end-to-end tolerance for one array of one case: a small multiple of the oracle's own spread."""
        return max(SPREAD_MULTIPLE * self.spread(case, array), FLOOR_REL * scale(self.array(case, array)))

    def step_inputs(self, case: str) -> list[torch.Tensor]:
        """The latents the official sampler fed its DiT at steps 1..n-1, rebuilt from the stored per-step
        predictions and re-noising draws: x[i+1] = (1 - t[i+1]) * denoised[i] + t[i+1] * noise[i] (ping-pong).
        Step 0's input is the request's own start (the initial noise, checked bitwise elsewhere)."""
        denoised = torch.from_numpy(self.array(case, "denoised_per_step"))
        noises = torch.from_numpy(self.array(case, "step_noises"))
        sigmas = torch.from_numpy(self.array(case, "sigmas")).reshape(-1)
        return [(1 - sigmas[i + 1]) * denoised[i] + sigmas[i + 1] * noises[i] for i in range(len(denoised) - 1)]


@cache
def fixture(name: str, reference: str = "reference.npz") -> Fixture:
    return Fixture(name, reference)


def fixture_cases(name: str, with_array: str | None = None) -> list[str]:
    """The case names of a fixture folder ([] when the fixtures are absent), optionally only those whose
    reference holds `with_array`."""
    path = FIXTURES / name / "cases.json"
    if not path.is_file():
        return []
    names = [c["name"] for c in json.loads(path.read_text())["cases"]]
    if with_array is None:
        return names
    files = np.load(FIXTURES / name / "reference.npz").files
    return [n for n in names if f"{n}__{with_array}" in files]


def oracle_threads() -> int:
    """Torch threads for the oracle tests: STABLE_AUDIO_THREADS when set (the portability run sets 1 and 2),
    else 1 (the fixtures are tiny: one thread is several times faster than two on a shared CPU)."""
    import os

    value = os.environ.get("STABLE_AUDIO_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def seeded_generator(fx: Any, case: str) -> torch.Generator:
    """The request's generator advanced past every draw the official generate() makes before decoding."""
    c = fx.cases[case]
    gen = torch.Generator().manual_seed(c["generate_kwargs"]["seed"])
    for draw in c["rng_draws"]:
        if not draw["what"].startswith("decode"):
            torch.randn(draw["shape"], generator=gen)
    return gen


def params_of(fx: Fixture, case: str, **changes: Any) -> Any:
    """The request a service client would send for this case's `generate()` call (uploads as arrays)."""
    from stable_audio_service.models.base import GenerationParams

    c = fx.cases[case]
    g = c["generate_kwargs"]
    fields = request_fields(c)
    level = fields.pop("init_noise_level", None)  # set below with the source it belongs to
    params = GenerationParams(**fields)
    if c["init_audio"]:
        params.init_audio = fx.array(case, "input_audio")
        params.init_noise_level = level
    if c["inpaint_audio"]:
        params.inpaint_audio = fx.array(case, "input_audio")
        starts, ends = g["inpaint_mask_start_seconds"], g["inpaint_mask_end_seconds"]
        if isinstance(starts, list):  # several regions
            params.inpaint_regions = list(zip(starts, ends, strict=True))
        else:
            params.inpaint_regions = [(starts, ends)]
    for key, value in changes.items():
        setattr(params, key, value)
    return params


# -- float16: Stability's `model_half=True` path (reference-fp16.npz) --------------------------------------------
# Measured on one AMD EPYC (Zen 4: AVX-512, no AVX512-FP16) with the service and with Stability's own library
# (stable_audio_3 @ 636f906, model_half=True), each stage fed its stored inputs, under ATEN_CPU_CAPABILITY
# default / avx2 / avx512, 1 thread, against the reference made on an Intel Sapphire Rapids (AVX512-FP16, AMX).
# Most float16 outputs differ from that host's by an ulp or so whatever the code (Stability's library here: up to
# 3.0e-3 unguided, 9.2e-3 guided, 2.7e-3 decode), so each tolerance is a few float16 ulps of the stage's scale,
# about twice the largest figure measured. Under avx2 / avx512 the service's DiT step equals Stability's library
# on the same host bitwise (guidance included), so its figures there are the library's own host spread.
#
# One DiT call, unguided, fed the official latents of its step: at most 2.6e-3 relative. Casts it catches (measured
# here): the DiT left in float32 0.53, the duration normalised in float32 (not cast to float16 before its Fourier
# features) 0.18, RoPE frequencies kept in float32 7.9e-3.
FP16_STEP_REL = 5e-3
# The same under guidance (cfg 7: larger scale, amplified by the float32 guidance): at most 6.6e-3 here (Stability's
# library under the portable kernels: 9.2e-3). Catches the timestep not cast to float16 before its Fourier
# features (1.15), the duration cast (8.8e-2), the DiT left in float32 (1.14).
FP16_GUIDED_STEP_REL = 1.5e-2
# The float16 decode fed the official latents and the request's draws: at most 2.9e-3 relative (portable kernels;
# 1.8e-3 under avx2 / avx512). A float32 decode moves it by only 3.3e-3; the test catches that by its samples, which
# are float16 values in the official decode.
FP16_DECODE_REL = 6e-3
# The sampler's exact part (float16 `1 - t`, draws in the latents' dtype): bitwise where the draws are; the portable
# sampler's draws move a float16 value by at most one ulp (2^-10 of its magnitude).
FP16_DRAW_REL = 0.0 if DRAWS_BITWISE else 2e-3
# End to end: a multiple of how far Stability's own float16 output moved on one host when only ATen's kernels
# changed (cross-kernel-fp16.json; float16's cross-host spread is not measured). Measured here: at most 3.2x
# (a2a audio, avx2), most cases 0.6x to 1.5x.
FP16_SPREAD_MULTIPLE = 6.0
FP16_FLOOR_REL = 2e-3


@pytest.fixture(scope="module", autouse=True)
def with_oracle_threads() -> Any:
    """Import into an oracle test module: its tests run at `oracle_threads()` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(oracle_threads())
    yield
    torch.set_num_threads(before)
