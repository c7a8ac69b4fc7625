"""LoRA adapters per request against Stability's own library: the lora-small oracle fixtures in
../shared/fixtures/sa3-official (two adapters in Stability's format for the small-tiny base, the outputs
`StableAudioModel.load_lora` + `set_lora_strength` + `generate` produced, and the parametrized weights it used).

What is checked: every fixture case from the seed through the model API and through POST /predict; the exact
weight chain bitwise; batching across adapters (a burst mixing adapters and none equals each request's solo
output, bitwise); no leak into later requests; the directory scan (broken and incompatible files listed with the
reason), reload, the LRU budget, the request errors (422 naming the field), the CLI, telemetry, OpenAPI.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from stable_audio_service.adapters import MIB, inspect_adapter, official_weight, strength_coefficient
from stable_audio_service.config import Settings
from stable_audio_service.models.base import GenerationParams, LoraRef
from stable_audio_service.models.stable_audio_3.family import StableAudio3Model
from stable_audio_service.models.stable_audio_3.lora_targets import sa3_targets

from . import oracle
from .conftest import decode_b64, serve
from .oracle import request_fields

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "sa3-official"
BASE = FIXTURES / "small-tiny"
LORAS = FIXTURES / "lora-small"
LORA_FX = oracle.fixture("lora-small") if (LORAS / "cases.json").is_file() else None


def tol(case_name: str, array: str) -> float:
    """The case's end-to-end tolerance: a multiple of Stability's own cross-host spread (tests/oracle.py)."""
    return LORA_FX.e2e_tol(case_name, array)


pytestmark = pytest.mark.skipif(
    not (LORAS / "cases.json").is_file() or not (BASE / "model.safetensors").is_file(),
    reason=f"{LORAS} or {BASE} is absent (the oracle fixtures live beside the repository, in ../shared)",
)


def _cases() -> list[dict]:
    path = LORAS / "cases.json"
    return json.loads(path.read_text())["cases"] if path.is_file() else []


CASES = [c["name"] for c in _cases()] or ["none"]


def case_of(name: str) -> dict:
    return next(c for c in _cases() if c["name"] == name)


def refs_of(case: dict) -> tuple[LoraRef, ...]:
    return tuple(LoraRef(Path(x["file"]).stem, float(x["strength"])) for x in case["loras"])


def params_of(case: dict, **over) -> GenerationParams:
    return GenerationParams(**{**request_fields(case), "loras": refs_of(case), **over})


def body_of(case: dict) -> dict:
    body = request_fields(case)
    if case["loras"]:
        body["loras"] = [{"name": r.name, "strength": r.strength} for r in refs_of(case)]
    return body


def maxdiff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.abs(a - b).max())


def run(model: StableAudio3Model, params: GenerationParams):
    state = model.start(params)
    while not state.finished:
        model.step([state])
    latents = state.x.clone()
    return state, latents, model.finish(state)


@pytest.fixture(scope="module", autouse=True)
def oracle_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(oracle.oracle_threads())
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ref():
    return np.load(LORAS / "reference.npz")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    """A private copy of the fixture adapters (tests add files to it)."""
    out = tmp_path_factory.mktemp("loras")
    for path in (LORAS / "adapters").glob("*.safetensors"):
        shutil.copy(path, out / path.name)
    return out


@pytest.fixture(scope="module")
def model(lora_dir) -> StableAudio3Model:
    return StableAudio3Model.from_checkpoint(
        BASE, name="small-tiny", device="cpu", dtype=torch.float32, text_cache_size=16, lora_dir=lora_dir
    )


@pytest.fixture(scope="module")
def plain_model() -> StableAudio3Model:
    return StableAudio3Model.from_checkpoint(BASE, name="small-tiny", device="cpu", dtype=torch.float32)


def random_adapter(
    path: Path, model: StableAudio3Model, kind: str, *, rank: int = 4, seed: int = 0, config: dict | None = None
) -> Path:
    """An adapter in Stability's file format with the fixture's recipe of random values (MAKING.md)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, t in model.adapters.targets.items():
        w = t.module.weight.detach().reshape(t.fan_out, -1)
        key = f"{name}.parametrizations.weight.0."
        if kind == "lora-xs":
            tensors[key + "M_xs"] = torch.randn(rank, rank, generator=g) * 0.05 * float(w.pow(2).mean().sqrt())
            continue
        tensors[key + "lora_A"] = torch.randn(rank, t.fan_in, generator=g) / t.fan_in**0.5
        rms = float(w.pow(2).mean().sqrt())
        tensors[key + "lora_B"] = torch.randn(t.fan_out, rank, generator=g) * 0.05 * rms * (t.fan_in / rank) ** 0.5
        if kind.startswith("dora"):
            dim = 1 if kind == "dora-rows" else 0
            tensors[key + "magnitude"] = w.norm(dim=dim) * (1 + 0.03 * torch.randn(w.shape[1 - dim], generator=g))
    meta = {"rank": rank, "alpha": rank, "adapter_type": kind, "dropout": 0.0, "include": None, "exclude": None}
    meta.update(config or {})
    save_file(
        {k: v.half().contiguous() for k, v in tensors.items()}, str(path), metadata={"lora_config": json.dumps(meta)}
    )
    return path


# -- the directory scan --------------------------------------------------------------------------------------------


def test_scan_finds_the_fixture_adapters_with_their_targets(model):
    infos = {i.name: i for i in model.adapters.registry.list()}
    adapters = json.loads((LORAS / "cases.json").read_text())["adapters"]
    for file, facts in adapters.items():
        info = infos[Path(file).stem]
        assert info.fits, info.problem
        config = facts["lora_config"]
        assert (info.adapter_type, info.rank, info.alpha) == (config["adapter_type"], config["rank"], config["alpha"])
        # Stability's targets, relative to the DiT wrapper (model.model) and the conditioner (model.conditioner)
        official = facts["target_layers"]["model.model"] + facts["target_layers"]["model.conditioner"]
        assert sorted(info.modules) == sorted(official)
        assert info.targets == len(official) == sum(facts["n_layers"].values())
        assert info.tensors == facts["n_tensors"]


def test_effective_weights_equal_stabilitys_bitwise(model, ref):
    """The exact chain (what DoRA's norms are computed from) gives the parametrized weights the DiT used."""
    registry, seen = model.adapters.registry, 0
    for case in _cases():
        entries = [(registry.load(r.name), r.strength) for r in refs_of(case)]
        for key in ref.files:
            if not key.startswith(case["name"] + "__effective_weight__"):
                continue
            name = key.split("__effective_weight__")[1].removeprefix("model.")  # model.model.X -> model.X
            steps = [(a.adapter_type, a.layers[name], strength_coefficient(a, s)) for a, s in entries if s != 0]
            weight = official_weight(model.adapters.targets[name].module.weight, steps)
            assert np.array_equal(weight.numpy(), ref[key]), key
            seen += 1
    assert seen == 15


# -- every fixture case, from the seed -----------------------------------------------------------------------------


@pytest.mark.parametrize("case_name", CASES)
def test_fixture_case_through_the_model_api(model, ref, case_name):
    case = case_of(case_name)
    key = f"{case_name}__".__add__
    state = model.start(params_of(case))
    # the conditioner's LoRA: the duration embedding is both the global conditioning and the duration token
    for ours, array in ((state.global_cond, "global_cond"), (state.context[:, -1], "duration_token")):
        ok, message = oracle.close_rel(ours, ref[key(array)], oracle.COND_REL)
        assert ok, f"{array}: {message}"
    oracle.assert_draws(state.x, ref[key("initial_noise")], "initial noise")
    while not state.finished:
        model.step([state])
    assert maxdiff(state.x, ref[key("latents")]) <= tol(case_name, "latents")
    assert maxdiff(model.finish(state), ref[key("audio")][0]) <= tol(case_name, "audio")


@pytest.mark.parametrize("case_name", CASES)
def test_one_dit_call_per_step_with_adapters(model, case_name):
    """Each step's prediction with the case's adapters, fed the latents the official sampler had at that step
    (rebuilt from its stored predictions and draws): tight, because one DiT call is not chaotic."""
    state = model.start(params_of(case_of(case_name)))
    inputs, denoised = LORA_FX.step_inputs(case_name), LORA_FX.array(case_name, "denoised_per_step")
    for i in range(len(denoised)):
        if i > 0:
            state.x = inputs[i - 1].clone()
        model.step([state])
        ok, message = oracle.close_rel(state.denoised, denoised[i], oracle.STEP_REL)
        assert ok, f"step {i}: {message}"


def test_control_equals_the_base_model_bitwise(model, plain_model):
    """No adapter through the LoRA-enabled model (hooks installed) is the plain model's output, bit for bit."""
    params = params_of(case_of("base_t2a_4s_cfg1"))
    _, latents, audio = run(model, params)
    _, base_latents, base_audio = run(plain_model, params)
    assert torch.equal(latents, base_latents) and np.array_equal(audio, base_audio)


def test_strength_zero_is_the_base_bitwise(model, plain_model):
    """Stability's checks: strength 0 gives the base (DoRA's exact shortcut, LoRA's zero term)."""
    params = params_of(case_of("base_t2a_4s_cfg1"), num_inference_steps=3)
    zero = (LoraRef("lora_r4", 0.0), LoraRef("dora_rows_r4", 0.0))
    _, latents, _ = run(model, params_of(case_of("base_t2a_4s_cfg1"), num_inference_steps=3, loras=zero))
    assert torch.equal(latents, run(plain_model, params)[1])


def test_a_request_after_an_adapter_request_is_unaffected(model):
    weights = {k: v.clone() for k, v in model.dit.state_dict().items()}
    base = params_of(case_of("base_t2a_4s_cfg1"), num_inference_steps=3)
    _, before, _ = run(model, base)
    run(model, params_of(case_of("stack_lora0p7_dora0p3_t2a_4s_cfg1"), num_inference_steps=3))
    _, after, _ = run(model, base)
    assert torch.equal(before, after)
    assert all(torch.equal(v, model.dit.state_dict()[k]) for k, v in weights.items())  # never modified in place


# -- batching across adapters ---------------------------------------------------------------------------------


def test_burst_mixing_adapters_equals_each_solo_output(model, ref):
    """One forward per step for: LoRA, no adapter (guided), DoRA, the stack, and LoRA at another strength with a
    negative prompt. Each equals its own solo run bitwise, and the fixture cases still reproduce the oracle."""
    requests = [
        params_of(case_of("lora_s1p0_t2a_4s_cfg1")),
        params_of(case_of("base_t2a_4s_cfg1"), prompt="rain on a roof", seed=7, guidance_scale=4.0),
        params_of(case_of("dora_rows_s1p0_t2a_4s_cfg1")),
        params_of(case_of("stack_lora0p7_dora0p3_t2a_4s_cfg1")),
        params_of(
            case_of("lora_s0p5_t2a_4s_cfg1"),
            seed=3,
            guidance_scale=3.0,
            negative_prompt="noise",
            loras=(LoraRef("lora_r4", -0.8),),
        ),
    ]
    assert len({model.batch_key(p) for p in requests}) == 1, "lora and dora-rows sets share forwards"
    solo = [run(model, p) for p in requests]
    states = [model.start(p) for p in requests]
    while not states[0].finished:
        model.step(states)
    for (_, latents, audio), state in zip(solo, states, strict=True):
        assert torch.equal(state.x, latents)
        assert np.array_equal(model.finish(state), audio)
    for (_, latents, _), name in zip(solo, [CASES[1], None, CASES[3], CASES[4]], strict=False):
        if name:
            assert maxdiff(latents, ref[f"{name}__latents"]) <= tol(name, "latents")


def test_alpha_over_rank_scales_the_adapter(tmp_path, ref):
    """The fixture adapters have alpha == rank, so they cannot show whether alpha / rank is applied. The same adapter
    written with alpha 8 and every lora_A halved (both exact in float32) is the same adapter for Stability's formula
    `float32(alpha / rank) * strength * B @ A`: it must give the oracle's output; without the scale it gives half the
    update."""
    from safetensors import safe_open

    source = LORAS / "adapters" / "lora_r4.safetensors"
    with safe_open(source, "pt") as f:
        tensors = {k: f.get_tensor(k) / 2 if k.endswith("lora_A") else f.get_tensor(k) for k in f.keys()}
        config = json.loads(f.metadata()["lora_config"])
    assert config["alpha"] == config["rank"] == 4
    folder = tmp_path / "adapters"
    folder.mkdir()
    save_file(
        tensors, folder / "lora_r4_alpha8.safetensors", metadata={"lora_config": json.dumps({**config, "alpha": 8})}
    )
    scaled = StableAudio3Model.from_checkpoint(
        BASE, name="small-tiny", device="cpu", dtype=torch.float32, lora_dir=folder
    )
    name = "lora_s1p0_t2a_4s_cfg1"
    _, latents, _ = run(scaled, params_of(case_of(name), loras=(LoraRef("lora_r4_alpha8", 1.0),)))
    assert maxdiff(latents, ref[f"{name}__latents"]) <= tol(name, "latents")


def test_dora_cols_sets_are_merged_and_batched_apart(model, lora_dir):
    """dora-cols rescales a layer's inputs per request, so its sets run on merged weights in batches of their own;
    a merged set's output equals the exact chain applied as weights."""
    random_adapter(lora_dir / "cols_r2.safetensors", model, "dora-cols", rank=2, seed=11)
    registry = model.adapters.registry
    assert registry.info("cols_r2").fits and registry.info("cols_r2").adapter_type == "dora-cols"
    plain = params_of(case_of("base_t2a_4s_cfg1"), num_inference_steps=2)
    cols = params_of(case_of("base_t2a_4s_cfg1"), num_inference_steps=2, loras=(LoraRef("cols_r2", 0.6),))
    cols_other = params_of(case_of("base_t2a_4s_cfg1"), num_inference_steps=2, loras=(LoraRef("cols_r2", 0.5),))
    assert model.batch_key(cols) != model.batch_key(plain)
    assert model.batch_key(cols) != model.batch_key(cols_other)
    assert model.batch_key(params_of(case_of("base_t2a_4s_cfg1"), loras=(LoraRef("cols_r2", 0.0),))) == (
        model.batch_key(params_of(case_of("base_t2a_4s_cfg1")))
    )
    plan = registry.plan(cols.loras)
    assert plan.merged
    name = "model.transformer.layers.1.ff.ff.2"
    adapter = registry.load("cols_r2")
    # MAKING.md's formula, written out here: V = W + c B A; W' = V / (||V||_col + 1e-12) * magnitude[None, :]
    w = model.adapters.targets[name].module.weight.detach()
    layer = adapter.layers[name]
    c = torch.tensor(1.0, dtype=torch.float32) * torch.tensor(0.6, dtype=torch.float32)
    v = w + c * (layer.B @ layer.A)
    expected = v / (v.norm(dim=0, keepdim=True) + 1e-12) * layer.magnitude[None, :]
    assert torch.equal(plan.layers[name].weight, expected)
    _, latents, _ = run(model, cols)
    assert not torch.equal(latents, run(model, plain)[1])


@pytest.mark.parametrize(
    "order",
    [("lora", "dora-rows"), ("dora-rows", "lora"), ("dora-rows", "dora-rows", "lora-xs"), ("lora-xs",)],
)
def test_factored_application_equals_the_merged_weight(model, lora_dir, order):
    """The shared-forward form `base * d + x A^T B^T` equals x W'^T + b with Stability's chained W', for every
    targeted Linear and Conv1d, in any stacking order."""
    registry = model.adapters.registry
    refs = []
    for i, kind in enumerate(order):
        name = f"f_{kind}_{i}"
        random_adapter(lora_dir / f"{name}.safetensors", model, kind, rank=3, seed=100 + i)
        refs.append(LoraRef(name, 0.7 - 0.4 * i))
    plan = registry.plan(refs)
    assert not plan.merged
    entries = [(registry.load(r.name), r.strength) for r in refs]
    g = torch.Generator().manual_seed(0)
    for name, target in model.adapters.targets.items():
        module = target.module
        x = torch.randn((2, module.in_channels, 5) if target.conv else (2, 5, target.fan_in), generator=g)
        steps = [(a.adapter_type, a.layers[name], strength_coefficient(a, s)) for a, s in entries]
        w = official_weight(module.weight, steps)
        expected = (
            torch.nn.functional.conv1d(x, w, module.bias)
            if target.conv
            else torch.nn.functional.linear(x, w, module.bias)
        )
        y = module(x).clone()  # the hook is idle outside a batch: the base output
        plan.layers[name].apply(module, x, y)
        scale = float(expected.abs().max())
        assert float((y - expected).abs().max()) <= 2e-6 * max(1.0, scale), name


def test_lru_budget_evicts_and_results_stay_right(lora_dir, ref):
    small = StableAudio3Model.from_checkpoint(BASE, name="small-tiny", device="cpu", dtype=torch.float32)
    adapters = LORAS / "adapters"
    need = max(
        i.memory_bytes
        for i in (
            inspect_adapter(p, sa3_targets(small.dit, small.duration_cond, "seconds_total"), 2**40)
            for p in adapters.glob("*.safetensors")
        )
    )
    small.enable_loras(adapters, cache_mb=1.5 * need / MIB)  # room for one adapter, not two
    registry = small.adapters.registry
    case = case_of("lora_s1p0_t2a_4s_cfg1")
    for name in ("lora_r4", "dora_rows_r4", "lora_r4"):
        registry.load(name)
    stats = registry.stats()
    assert stats["evictions"] >= 2 and stats["used_bytes"] <= stats["budget_bytes"]
    _, latents, _ = run(small, params_of(case))
    assert maxdiff(latents, ref[f"{case['name']}__latents"]) <= tol(case["name"], "latents")


# -- the HTTP service --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(lora_dir):
    c = serve(Settings(model=str(BASE), lora_dir=lora_dir, batch_wait_ms=400, max_batch_size=4, skip_memory_check=True))
    yield c
    c.__exit__(None, None, None)


def _audio(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    audio, sr = decode_b64(response.json()["audio_b64"])
    assert sr == 44100
    return audio


@pytest.mark.parametrize("case_name", CASES)
def test_fixture_case_through_predict(client, ref, case_name):
    case = case_of(case_name)
    r = client.post("/predict", json=body_of(case))
    audio = _audio(r)
    assert maxdiff(audio, ref[f"{case_name}__audio"][0]) <= tol(case_name, "audio") + oracle.PCM16
    applied = r.json()["meta"]["loras"]
    assert applied == ([{"name": x.name, "strength": x.strength} for x in refs_of(case)] or None)


def test_burst_through_the_engine_equals_solo(client, ref):
    """Four requests (three adapter sets and none) queued together through the request path run as one batch and
    each gives its oracle output; their job views say which adapters were applied."""
    from stable_audio_service import service
    from stable_audio_service.api.schemas import StableAudioRequest

    names = [CASES[1], CASES[0], CASES[3], CASES[4]]
    state = client.app.state.service
    resolved = [service.resolve(StableAudioRequest(**body_of(case_of(n))), state.model, state.settings) for n in names]
    jobs = [state.engine.submit(r.params, format="wav") for r in resolved]  # within microseconds: one batch
    deadline = time.monotonic() + 300
    while any(j.status.value not in ("done", "failed", "cancelled") for j in jobs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for job, name in zip(jobs, names, strict=True):
        view = client.get(f"/jobs/{job.id}").json()
        assert view["status"] == "done", view
        assert job.batch_size == 4, "the four requests shared their forward passes"
        want = [{"name": x.name, "strength": x.strength} for x in refs_of(case_of(name))] or None
        assert view["meta"]["loras"] == want
        data, _ = sf.read(io.BytesIO(client.get(f"/jobs/{job.id}/audio").content), dtype="float32", always_2d=True)
        assert maxdiff(data.T, ref[f"{name}__audio"][0]) <= tol(name, "audio") + oracle.PCM16


def test_get_loras_lists_usable_and_broken_files_with_reasons(client, lora_dir, model):
    (lora_dir / "garbage.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    random_adapter(lora_dir / "wrong_rank.safetensors", model, "lora", rank=4, config={"rank": 5})
    medium = {
        "model.transformer.layers.7.self_attn.to_qkv.parametrizations.weight.0.lora_A": torch.zeros(4, 128),
        "model.transformer.layers.7.self_attn.to_qkv.parametrizations.weight.0.lora_B": torch.zeros(384, 4),
    }
    save_file({k: v.half() for k, v in medium.items()}, str(lora_dir / "other_model.safetensors"))
    random_adapter(lora_dir / "bora.safetensors", model, "dora-rows", config={"adapter_type": "bora"})
    nan = {
        "model.transformer.project_in.parametrizations.weight.0.lora_A": torch.full((4, 64), float("nan")),
        "model.transformer.project_in.parametrizations.weight.0.lora_B": torch.zeros(128, 4),
    }
    save_file({k: v.half() for k, v in nan.items()}, str(lora_dir / "nan.safetensors"))
    (lora_dir / "notes.txt").write_text("not an adapter")

    r = client.get("/loras")
    assert r.status_code == 200
    body = r.json()
    assert body["enabled"] and body["max_per_request"] == 4
    listed = {x["name"]: x for x in body["loras"]}
    assert "notes" not in listed
    assert listed["lora_r4"]["fits"] and listed["lora_r4"]["batching"] == "shared"
    assert listed["lora_r4"]["targeted_modules"] == 40 and listed["lora_r4"]["size_bytes"] > 0
    reasons = {
        "garbage": "cannot be read",
        "wrong_rank": "shape",
        "other_model": "not in this model",
        "bora": "not supported",
        "nan": "NaN",
    }
    for name, says in reasons.items():
        assert not listed[name]["fits"] and says in listed[name]["problem"], (name, listed[name]["problem"])
        assert str(lora_dir) not in json.dumps(listed[name])  # no local paths over HTTP
    assert client.get("/health").json()["status"] == "ok"  # never fatal

    r = client.post("/predict", json={"prompt": "x", "duration": 1, "loras": [{"name": "wrong_rank"}]})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "loras", 0, "name"] and "does not fit" in detail["msg"]


def test_reload_picks_up_new_and_removed_files(client, lora_dir):
    shutil.copy(lora_dir / "lora_r4.safetensors", lora_dir / "copy_of_lora.safetensors")
    listed = {x["name"] for x in client.post("/loras/reload").json()["loras"]}
    assert "copy_of_lora" in listed
    body = {"prompt": "x", "duration": 1, "num_inference_steps": 2, "seed": 1}
    r = client.post("/predict", json=body | {"loras": [{"name": "copy_of_lora", "strength": 0.5}]})
    same = client.post("/predict", json=body | {"loras": [{"name": "lora_r4", "strength": 0.5}]})
    assert r.status_code == 200 and r.json()["audio_b64"] == same.json()["audio_b64"]
    (lora_dir / "copy_of_lora.safetensors").unlink()
    assert "copy_of_lora" not in {x["name"] for x in client.post("/loras/reload").json()["loras"]}
    r = client.post("/predict", json=body | {"loras": [{"name": "copy_of_lora"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "loras", 0, "name"]


@pytest.mark.parametrize(
    ("loras", "loc", "says"),
    [
        ([{"name": "no_such_adapter"}], ["body", "loras", 0, "name"], "no adapter named"),
        ([{"name": "lora_r4"}, {"name": "missing"}], ["body", "loras", 1, "name"], "no adapter named"),
        ([{"name": "lora_r4", "strength": 10.5}], ["body", "loras", 0, "strength"], "less than or equal"),
        ([{"name": "lora_r4", "strength": "strong"}], ["body", "loras", 0, "strength"], "number"),
        ([{"name": "../lora_r4"}], ["body", "loras", 0, "name"], "pattern"),
        ([{"strength": 1.0}], ["body", "loras", 0, "name"], "required"),
        ([{"name": "lora_r4", "weight": 1}], ["body", "loras", 0, "weight"], "not permitted"),
        ([{"name": "lora_r4"}] * 5, ["body", "loras"], "at most 4"),
    ],
)
def test_bad_lora_requests_are_422_naming_the_field(client, loras, loc, says):
    r = client.post("/predict", json={"prompt": "x", "duration": 1, "loras": loras})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == loc and says in detail["msg"], detail


def test_models_and_openapi_say_loras_only_with_a_directory(client, tiny_dir):
    info = client.get("/models").json()
    assert info["capabilities"]["loras"] is True
    assert info["fields"]["loras"]["max_items"] == 4 and info["fields"]["loras"]["strength"]["maximum"] == 10
    assert "loras" in client.get("/openapi.json").json()["components"]["schemas"]["StableAudioRequest"]["properties"]
    other = serve(Settings(model=str(tiny_dir)))  # open-1.0 tiny: no adapters
    try:
        r = other.post("/predict", json={"prompt": "x", "duration": 1, "loras": [{"name": "lora_r4"}]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "loras"]
        listing = other.get("/loras").json()
        assert listing["enabled"] is False and listing["loras"] == []
        models = other.get("/models").json()
        assert models["fields"]["loras"] is None
        assert models["capabilities"]["loras_unavailable"] is None  # no setting would add them to open-1.0
        assert models["family_title"] == "Stable Audio Open 1.0"
        schema = other.get("/openapi.json").json()["components"]["schemas"]["StableAudioRequest"]
        assert "loras" not in schema["properties"]
    finally:
        other.__exit__(None, None, None)


def test_sa3_without_a_directory_says_how_to_enable_it(plain_model):
    from stable_audio_service.api.schemas import StableAudioRequest
    from stable_audio_service.service import RequestError, check_request

    req = StableAudioRequest(prompt="x", loras=[{"name": "lora_r4"}])
    with pytest.raises(RequestError) as err:
        check_request(req, plain_model, Settings())
    assert err.value.loc == ("loras",) and "STABLE_AUDIO_LORA_DIR" in err.value.message
    from stable_audio_service.service import capabilities

    assert "STABLE_AUDIO_LORA_DIR" in capabilities(plain_model, Settings())["loras_unavailable"]


def test_span_and_metric_name_the_adapters(client):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client.parser import text_string_to_metric_families

    from stable_audio_service import telemetry

    exporter = InMemorySpanExporter()
    telemetry.tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))

    def uses() -> float:
        """Summed over outcomes; a series repeated in one scrape counts once (as test_telemetry's scrape)."""
        series = {
            tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(client.get("/metrics").text)
            for s in f.samples
            if s.name == "stable_audio_lora_uses_total" and s.labels.get("adapter") == "dora_rows_r4"
        }
        return sum(series.values())

    before = uses()
    loras = [{"name": "lora_r4", "strength": 0.25}, {"name": "dora_rows_r4", "strength": 1.5}]
    r = client.post("/predict", json={"prompt": "x", "duration": 1, "num_inference_steps": 2, "loras": loras})
    assert r.status_code == 200
    deadline = time.monotonic() + 10  # the engine's observer ends the span just after the job turns terminal
    while time.monotonic() < deadline:
        spans = [s for s in exporter.get_finished_spans() if s.name == telemetry.GENERATE_SPAN]
        if spans and uses() == before + 1:
            break
        time.sleep(0.05)
    assert spans and tuple(spans[-1].attributes["stable_audio.loras"]) == ("lora_r4:0.25", "dora_rows_r4:1.5")
    assert uses() == before + 1


# -- the command line ------------------------------------------------------------------------------------------


def test_cli_generate_with_lora(tmp_path, ref):
    from typer.testing import CliRunner

    from stable_audio_service.cli import app

    case = case_of("stack_lora0p7_dora0p3_t2a_4s_cfg1")
    g = case["generate_kwargs"]
    out = tmp_path / "out.wav"
    args = ["generate", g["prompt"], "-o", str(out), "--model", str(BASE), "--lora-dir", str(LORAS / "adapters")]
    args += ["--duration", str(g["duration"]), "--steps", str(g["steps"]), "--seed", str(g["seed"])]
    args += ["--lora", "lora_r4:0.7", "--lora", "dora_rows_r4:0.3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    audio, _ = sf.read(out, dtype="float32", always_2d=True)
    assert maxdiff(audio.T, ref[f"{case['name']}__audio"][0]) <= tol(case["name"], "audio") + oracle.PCM16

    bad = CliRunner().invoke(app, [*args[:8], "--lora", "lora_r4:loud"])
    assert bad.exit_code == 2 and "strength" in bad.output


# -- the playground ----------------------------------------------------------------------------------------------


def test_playground_picks_adapters_and_strengths(tmp_path, ref):
    """The page lists the adapters from GET /loras (unusable ones disabled), sends the picked ones in order with
    their strengths, and the clip is the oracle's stacked case."""
    import httpx

    from .conftest import LiveServer
    from .test_web import CHROMIUM, CHROMIUM_ARGS, _browser_missing, fill_fast, open_page

    if _browser_missing():
        pytest.skip(_browser_missing())
    from playwright.sync_api import sync_playwright

    adapters = tmp_path / "loras"
    shutil.copytree(LORAS / "adapters", adapters)
    (adapters / "broken.safetensors").write_bytes(b"not an adapter")
    server = LiveServer(Settings(model=str(BASE), lora_dir=adapters, skip_memory_check=True))
    case = case_of("stack_lora0p7_dora0p3_t2a_4s_cfg1")
    g = case["generate_kwargs"]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            sent: list[dict] = []
            page.on("request", lambda r: sent.append(r.post_data_json) if r.method == "POST" else None)
            open_page(page, server.url)
            page.wait_for_function("() => document.querySelectorAll('#lora-pick option').length === 3")
            options = page.eval_on_selector_all("#lora-pick option", "os => os.map(o => [o.value, o.disabled])")
            assert sorted(options) == [["broken", True], ["dora_rows_r4", False], ["lora_r4", False]]
            for name in ("lora_r4", "dora_rows_r4", "lora_r4"):
                page.select_option("#lora-pick", name)
                page.get_by_role("button", name="Add adapter").click()
            page.get_by_role("button", name="Remove lora_r4").nth(1).click()  # the third one again
            strengths = page.locator('#loras input[data-key="strength"]')
            assert strengths.count() == 2
            strengths.nth(0).fill("0.7")
            strengths.nth(1).fill("0.3")
            fill_fast(page, g["prompt"], seed=g["seed"], steps=g["steps"], duration=g["duration"])
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function("() => document.getElementById('spectrogram').dataset.drawn === '1'")
            job_id = page.evaluate("document.body.dataset.jobId")
            browser.close()
        assert not errors, errors
        body = next(b for b in sent if b and "prompt" in b)
        assert body["loras"] == [{"name": "lora_r4", "strength": 0.7}, {"name": "dora_rows_r4", "strength": 0.3}]
        wav = httpx.get(f"{server.url}/jobs/{job_id}/audio", timeout=30).content
        audio, _ = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
        assert maxdiff(audio.T, ref[f"{case['name']}__audio"][0]) <= tol(case["name"], "audio") + oracle.PCM16
    finally:
        server.stop()
