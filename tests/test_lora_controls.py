"""Per-adapter LoRA controls against Stability's own library: the lora-controls oracle in
../shared/fixtures/sa3-official (the lora-small adapters on the small-tiny base, generated with
`set_lora_strength(s, lora_index=i)` and `generate(lora_configs=[{"lora_index", "interval", "layer_filter"}])`).

What is checked: every case one DiT call at a time (fed the official inputs of each step) and end to end; the steps
each adapter is active at; the parametrized weights Stability's DiT ended with, bitwise; the conditioner untouched
by intervals and filters and driven by its own strength; requests with different controls sharing a batch and each
getting its solo output bitwise; the request path (422s naming the field), GET /loras, the CLI and the client.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stable_audio_service.adapters import PlanEntry, official_weight, strength_coefficient
from stable_audio_service.config import Settings
from stable_audio_service.models.base import GenerationParams, LoraRef
from stable_audio_service.models.stable_audio_3.family import StableAudio3Model

from . import oracle
from .conftest import decode_b64, serve

FIXTURES = oracle.FIXTURES
BASE = FIXTURES / "small-tiny"
CONTROLS = FIXTURES / "lora-controls"
ADAPTERS = CONTROLS / "adapters"

pytestmark = pytest.mark.skipif(
    not (CONTROLS / "cases.json").is_file() or not (BASE / "model.safetensors").is_file(),
    reason=f"{CONTROLS} or {BASE} is absent (the oracle fixtures live beside the repository, in ../shared)",
)

CASES = oracle.fixture_cases("lora-controls") or ["none"]
WITH_ADAPTERS = [c for c in CASES if c != "base_t2a_4s_cfg1"] or ["none"]


def fx() -> oracle.Fixture:
    return oracle.fixture("lora-controls")


def refs_of(case_name: str) -> tuple[LoraRef, ...]:
    """The case's adapters with their `lora_configs` as this service's request items: Stability's comma-separated
    filter string becomes a list of substrings."""
    case = fx().cases[case_name]
    configs = {c["lora_index"]: c for c in case["generate_kwargs"].get("lora_configs") or []}
    refs = []
    for item in case["loras"]:
        config = configs.get(item["lora_index"], {})
        substrings = tuple(s for s in (config.get("layer_filter") or "").split(",") if s.strip())
        interval = tuple(float(v) for v in config.get("interval", (0.0, 1.0)))
        refs.append(LoraRef(Path(item["file"]).stem, float(item["strength"]), None, interval, substrings))
    return tuple(refs)


def params_of(case_name: str, **over) -> GenerationParams:
    fields = oracle.request_fields(fx().cases[case_name])
    return GenerationParams(**{**fields, "loras": refs_of(case_name), **over})


def body_of(case_name: str) -> dict:
    body = oracle.request_fields(fx().cases[case_name])
    items = []
    for r in refs_of(case_name):
        items.append({"name": r.name, "strength": r.strength, "interval": list(r.interval)})
        if r.layer_filter:
            items[-1]["layer_filter"] = list(r.layer_filter)
    return body | ({"loras": items} if items else {})


def run(model: StableAudio3Model, params: GenerationParams):
    state = model.start(params)
    while not state.finished:
        model.step([state])
    return state, state.x.clone(), model.finish(state)


@pytest.fixture(scope="module", autouse=True)
def oracle_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(oracle.oracle_threads())
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> StableAudio3Model:
    return StableAudio3Model.from_checkpoint(
        BASE, name="small-tiny", device="cpu", dtype=torch.float32, text_cache_size=16, lora_dir=ADAPTERS
    )


# -- the oracle cases ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_name", CASES)
def test_one_dit_call_per_step(model, case_name):
    """Each step's prediction fed the latents the official sampler had at that step: which adapters act at which
    sigma, and on which layers, decides it (one DiT call is not chaotic: the tolerance is tight)."""
    state = model.start(params_of(case_name))
    inputs, denoised = fx().step_inputs(case_name), fx().array(case_name, "denoised_per_step")
    for i in range(len(denoised)):
        if i > 0:
            state.x = inputs[i - 1].clone()
        model.step([state])
        ok, message = oracle.close_rel(state.denoised, denoised[i], oracle.STEP_REL)
        assert ok, f"step {i}: {message}"


@pytest.mark.parametrize("case_name", CASES)
def test_case_end_to_end(model, case_name):
    """From the seed: the conditioner's adapter layers act whatever the interval and filter (they sit outside the
    DiT), and the latents and audio are Stability's within the oracle's tolerance."""
    state = model.start(params_of(case_name))
    for ours, array in ((state.global_cond, "global_cond"), (state.context[:, -1], "duration_token")):
        ok, message = oracle.close_rel(ours, fx().array(case_name, array), oracle.COND_REL)
        assert ok, f"{array}: {message}"
    while not state.finished:
        model.step([state])
    assert oracle.maxdiff(state.x, fx().array(case_name, "latents")) <= fx().e2e_tol(case_name, "latents")
    audio = model.finish(state)
    assert oracle.maxdiff(audio, fx().array(case_name, "audio")[0]) <= fx().e2e_tol(case_name, "audio")


@pytest.mark.parametrize("case_name", WITH_ADAPTERS)
def test_active_steps_are_stabilitys(model, case_name):
    """`lora_active_steps` of the oracle: adapter i acts at step k when interval[0] <= sigma_k <= interval[1]."""
    state = model.start(params_of(case_name))
    sigmas = state.sigmas[0, :-1].tolist()
    active = {
        str(i): [k for k, s in enumerate(sigmas) if state.adapters.active(s)[i]]
        for i in range(len(state.adapters.entries))
    }
    want = fx().cases[case_name]["derived"]["lora_active_steps"]
    assert {i: active[i] for i in want} == want


@pytest.mark.parametrize("case_name", WITH_ADAPTERS)
def test_last_step_weights_equal_stabilitys_bitwise(model, case_name):
    """The parametrized weights the official DiT ended with (its last step): the chain of the adapters active at
    the last sigma and not filtered on that layer, in request order, Stability's chain op for op."""
    state = model.start(params_of(case_name))
    entries, last = state.adapters.entries, float(state.sigmas[0, -2])
    active = state.adapters.active(last)
    targets = model.adapters.targets
    seen = 0
    for key in fx().ref.files:
        if not key.startswith(f"{case_name}__effective_weight__"):
            continue
        name = key.split("__effective_weight__")[1].removeprefix("model.")
        target = targets[name]
        steps = []
        for entry, on in zip(entries, active, strict=True):
            strength = entry.strength_on(target)
            if on and strength != 0 and name in entry.adapter.layers:
                coefficient = strength_coefficient(entry.adapter, strength)
                steps.append((entry.adapter.adapter_type, entry.adapter.layers[name], coefficient))
        weight = official_weight(target.module.weight, steps)
        assert np.array_equal(weight.numpy(), fx().ref[key]), key
        seen += 1
    assert seen == 3


def test_filtered_adapter_stacks_as_absent_before_an_unfiltered_one(model):
    """A filtered adapter passes the weight through on that layer: the next adapter (DoRA, which normalises what
    reaches it) acts on the base weight there, as if the first were not stacked at all."""
    registry = model.adapters.registry
    name = "model.transformer.layers.0.cross_attn.to_q"
    target = model.adapters.targets[name]
    lora, dora = registry.load("lora_r4"), registry.load("dora_rows_r4")
    filtered = PlanEntry(lora, 0.8, 0.8, ("cross_attn",))
    plan = registry.plan_of([filtered, PlanEntry(dora, 0.6, 0.6)], stepwise=True)
    alone = registry.plan_of([PlanEntry(dora, 0.6, 0.6)], stepwise=True)
    x = torch.randn(2, 5, target.fan_in, generator=torch.Generator().manual_seed(0))
    y, y_alone = target.module(x).clone(), target.module(x).clone()
    plan.layers[name].apply(target.module, x, y)
    alone.layers[name].apply(target.module, x, y_alone)
    assert torch.equal(y, y_alone)
    other = "model.transformer.layers.0.self_attn.to_qkv"  # not filtered: both adapters act there
    assert plan.layers[other].A.shape[0] == 2 * alone.layers[other].A.shape[0]


# -- conditioner strength ---------------------------------------------------------------------------------------


def test_conditioner_strength_defaults_to_strength_and_drives_only_the_conditioner(model):
    """Stability's `set_lora_strength(s, i)` fills the DiT's and the conditioner's strength buffers alike: an
    omitted conditioner strength is the strength (bitwise the same request). Given apart, it alone decides the
    duration embedding, and the DiT's strength alone the DiT."""
    three = {"num_inference_steps": 3}
    lora = LoraRef("lora_r4", 0.7)
    same = run(model, params_of("base_t2a_4s_cfg1", loras=(lora,), **three))
    explicit = run(model, params_of("base_t2a_4s_cfg1", loras=(LoraRef("lora_r4", 0.7, 0.7),), **three))
    assert torch.equal(same[1], explicit[1])

    base = model.start(params_of("base_t2a_4s_cfg1"))
    dit_only = model.start(params_of("base_t2a_4s_cfg1", loras=(LoraRef("lora_r4", 0.7, 0.0),)))
    assert torch.equal(dit_only.global_cond, base.global_cond)
    cond_only = model.start(params_of("base_t2a_4s_cfg1", loras=(LoraRef("lora_r4", 0.0, 0.7),)))
    full = model.start(params_of("base_t2a_4s_cfg1", loras=(lora,)))
    assert torch.equal(cond_only.global_cond, full.global_cond)
    assert not torch.equal(cond_only.global_cond, base.global_cond)
    # strength 0 on the DiT: the step is the base DiT's, on the adapted conditioning
    plain = model.start(params_of("base_t2a_4s_cfg1"))
    plain.global_cond, plain.context = cond_only.global_cond.clone(), cond_only.context.clone()
    model.step([cond_only])
    model.step([plain])
    assert torch.equal(cond_only.denoised, plain.denoised)


# -- batching ------------------------------------------------------------------------------------------------------


def test_different_intervals_and_filters_share_a_batch_and_each_gets_its_solo_output(model):
    """Every case and the base in one forward per step (each request's DiT plan follows its own sigma), plus a
    request at another step count whose sigmas cross the intervals elsewhere: each equals its solo run bitwise."""
    requests = [params_of(c) for c in CASES]
    requests.append(params_of("stack_interval_and_filter", num_inference_steps=5, seed=9))
    assert len({model.batch_key(p) for p in requests}) == 1
    solo = [run(model, p)[1] for p in requests]
    states = [model.start(p) for p in requests]
    while any(not s.finished for s in states):
        model.step([s for s in states if not s.finished])
    for state, latents in zip(states, solo, strict=True):
        assert torch.equal(state.x, latents)


def test_interval_bounds_are_inclusive_in_float32(model):
    """Stability compares `interval[0] <= sigma[0] <= interval[1]` with sigma a float32 tensor, so the bounds are
    read as float32: a bound written as the double nearest a step's sigma still includes that step."""
    state = model.start(params_of("base_t2a_4s_cfg1", loras=(LoraRef("lora_r4", 1.0),)))
    sigmas = state.sigmas[0, :-1].tolist()
    k = 6
    exact = sigmas[k]
    near = float(np.float64(exact) + 1e-9)  # rounds to the same float32
    assert np.float32(near) == np.float32(exact) and near != exact
    for low, high in ((exact, exact), (near, near), (0.0, near), (near, 1.0)):
        adapters = model.adapters.request((LoraRef("lora_r4", 1.0, None, (low, high)),))
        active = [k for k, s in enumerate(sigmas) if adapters.active(s)[0]]
        assert k in active, (low, high, active)
    adapters = model.adapters.request((LoraRef("lora_r4", 1.0, None, (exact, exact)),))
    assert [i for i, s in enumerate(sigmas) if adapters.active(s)[0]] == [k]


# -- the request path ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    c = serve(Settings(model=str(BASE), lora_dir=ADAPTERS, batch_wait_ms=50, skip_memory_check=True))
    yield c
    c.__exit__(None, None, None)


def test_case_through_predict(client):
    name = "stack_interval_and_filter"
    r = client.post("/predict", json=body_of(name))
    assert r.status_code == 200, r.text
    audio, _ = decode_b64(r.json()["audio_b64"])
    assert oracle.maxdiff(audio, fx().array(name, "audio")[0]) <= fx().e2e_tol(name, "audio") + oracle.PCM16


@pytest.mark.parametrize(
    ("item", "loc", "says"),
    [
        ({"interval": [0.7, 0.2]}, ["body", "loras", 0, "interval"], "min <= max"),
        ({"interval": [0.0, 1.5]}, ["body", "loras", 0, "interval", 1], "less than or equal"),
        ({"interval": [0.5]}, ["body", "loras", 0, "interval"], "at least 2"),
        ({"interval": [0.1, 0.2, 0.3]}, ["body", "loras", 0, "interval"], "at most 2"),
        ({"interval": [0.1, "late"]}, ["body", "loras", 0, "interval", 1], "number"),
        ({"layer_filter": ["cross_attn", "  "]}, ["body", "loras", 0, "layer_filter", 1], "blank"),
        ({"layer_filter": ["cross_attn, to_q"]}, ["body", "loras", 0, "layer_filter", 0], "comma"),
        ({"layer_filter": [""]}, ["body", "loras", 0, "layer_filter", 0], "at least 1"),
        ({"layer_filter": ["layers.[0-99].[0-99]."]}, ["body", "loras", 0, "layer_filter", 0], "expand"),
        ({"layer_filter": "cross_attn"}, ["body", "loras", 0, "layer_filter"], "list"),
        ({"conditioner_strength": 10.5}, ["body", "loras", 0, "conditioner_strength"], "less than or equal"),
    ],
)
def test_bad_controls_are_422_naming_the_field(client, item, loc, says):
    r = client.post("/predict", json={"prompt": "x", "duration": 1, "loras": [{"name": "lora_r4", **item}]})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == loc and says in detail["msg"], detail


def test_get_loras_and_models_state_the_controls(client):
    listing = client.get("/loras").json()
    controls = listing["controls"]
    assert controls["strength"] == {"default": 1.0, "minimum": -10.0, "maximum": 10.0}
    assert controls["conditioner_strength"]["default"] == "strength"
    assert controls["interval"] == {"default": [0.0, 1.0], "minimum": 0.0, "maximum": 1.0}
    assert controls["layer_filter"]["max_items"] == 32
    assert "transformer.layers.0.self_attn.to_qkv" in listing["layer_names"]
    assert not any(n.startswith(("model.", "conditioners.")) for n in listing["layer_names"])
    fields = client.get("/models").json()["fields"]["loras"]
    assert fields["interval"] == controls["interval"] and fields["layer_filter"] == controls["layer_filter"]
    item = client.get("/openapi.json").json()["components"]["schemas"]["LoraRequest"]["properties"]
    assert {"conditioner_strength", "interval", "layer_filter"} <= set(item)


def test_cli_takes_a_conditioner_strength(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stable_audio_service import cli

    sent = []
    monkeypatch.setattr(cli, "_generate_local", lambda body, *rest: sent.append(body))
    args = ["generate", "x", "-o", str(tmp_path / "x.wav"), "--lora", "lora_r4:0.8:0", "--lora", "dora_rows_r4"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    items = [x.model_dump(exclude_none=True) for x in sent[0].loras]
    assert items == [
        {"name": "lora_r4", "strength": 0.8, "conditioner_strength": 0.0},
        {"name": "dora_rows_r4", "strength": 1.0},
    ]
    bad = CliRunner().invoke(cli.app, ["generate", "x", "-o", str(tmp_path / "x.wav"), "--lora", "lora_r4:1:loud"])
    assert bad.exit_code == 2 and "conditioner strength" in bad.output
    bad = CliRunner().invoke(cli.app, ["generate", "x", "-o", str(tmp_path / "x.wav"), "--lora", "lora_r4:1:1:1"])
    assert bad.exit_code == 2 and "at most two numbers" in bad.output


def test_client_sends_the_controls():
    from stable_audio_service.client import Lora, build_body

    body = build_body(
        "x",
        {"loras": [Lora("a", 0.5, conditioner_strength=1.0, interval=(0.0, 0.5), layer_filter=["cross_attn"]), "b"]},
    )
    assert body["loras"] == [
        {
            "name": "a",
            "strength": 0.5,
            "conditioner_strength": 1.0,
            "interval": [0.0, 0.5],
            "layer_filter": ["cross_attn"],
        },
        {"name": "b"},
    ]
    assert json.dumps(body)  # plain JSON
