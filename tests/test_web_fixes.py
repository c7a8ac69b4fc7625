"""The playground as a new user finds it, on a desktop and on a phone: what was used is shown and comes back with
"Reuse settings" (adapters and their controls too), mistakes are caught beside the field before anything is sent,
the pictures share one timeline and scale, and the editor stays usable at 390 px.

One tiny Stable Audio 3 model with two random adapters (and one broken file) is served for the whole module, and
one Chromium drives it (tests/test_web.py's fixtures).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from stable_audio_service.config import Settings
from stable_audio_service.models.tiny import make_tiny

from .test_web import (  # noqa: F401
    CANVAS_STATS,
    PHONE,
    SOURCE_SECONDS,
    SR,
    _browser_missing,
    _Server,
    browser,
    load_source,
    needs_browser,
    open_page,
    page,
    posted_jobs,
    source_wav,
    wait_result,
    watch_network,
)

STEPS = 4


@pytest.fixture(scope="module")
def live_lora(tmp_path_factory):
    """A tiny SA3 model serving two random adapters (`warm`, `bright`) and a file that is not an adapter."""
    if _browser_missing():
        pytest.skip(_browser_missing())
    from .test_lora import random_adapter

    root = tmp_path_factory.mktemp("web-fixes")
    model_dir = make_tiny(root / "tiny-sa3", family="sa3")
    adapters = root / "loras"
    adapters.mkdir()
    server = _Server(
        Settings(model=str(model_dir), lora_dir=adapters, batch_wait_ms=0, max_batch_size=2, estimate_warm_up=False)
    )
    model = server.app.state.service.engine.model
    random_adapter(adapters / "warm.safetensors", model, "lora", rank=2, seed=1)
    random_adapter(adapters / "bright.safetensors", model, "lora", rank=2, seed=2)
    (adapters / "broken.safetensors").write_bytes(b"not an adapter")
    listed = httpx.post(server.url + "loras/reload", timeout=30).json()["loras"]
    assert sorted((a["name"], a["fits"]) for a in listed) == [("bright", True), ("broken", False), ("warm", True)]
    yield server
    server.stop()


def _problem(server, name: str) -> str:
    return next(a["problem"] for a in httpx.get(server.url + "loras").json()["loras"] if a["name"] == name)


def _adapter_row(p, i: int):
    return p.locator(f'#loras li[data-i="{i}"]')


def _control(p, i: int, key: str):
    return p.locator(f'#loras input[data-i="{i}"][data-key="{key}"]')


@needs_browser
def test_adapters_with_their_controls_are_sent_shown_and_restored(live_lora, page):  # noqa: F811
    open_page(page, live_lora.url)
    page.wait_for_function("() => document.querySelectorAll('#lora-pick option').length === 3")
    seen = watch_network(page)
    # a file that cannot be used says why, in the service's words
    problems = page.locator("#lora-problems").inner_text()
    assert _problem(live_lora, "broken") in problems and "GET /loras says why" not in page.content()

    for name in ("warm", "bright"):
        page.select_option("#lora-pick", name)
        page.get_by_role("button", name="Add adapter").click()
    page.get_by_label("Prompt", exact=True).fill("a warm pad")
    page.get_by_label("Steps").fill(str(STEPS))
    page.get_by_label("Seed", exact=True).fill("77")

    # an out-of-range strength: the strength box is outlined (not the dropdown), said beside the adapters, not sent
    _control(page, 0, "strength").fill("11")
    page.get_by_role("button", name="Generate").click()
    assert _control(page, 0, "strength").get_attribute("aria-invalid") == "true"
    assert page.locator("#lora-pick").get_attribute("aria-invalid") is None
    assert "strength: must be between -10 and 10" in page.locator("#loras-error").inner_text()
    assert page.evaluate("document.activeElement.dataset.key") == "strength"
    assert not posted_jobs(seen)

    # the second adapter's advanced controls; the interval backwards first (refused beside it), then right
    _control(page, 0, "strength").fill("0.7")
    _adapter_row(page, 1).locator("summary").click()
    _control(page, 1, "conditioner_strength").fill("0.5")
    _control(page, 1, "interval-min").fill("0.8")
    _control(page, 1, "interval-max").fill("0.2")
    page.get_by_role("button", name="Generate").click()
    assert _control(page, 1, "interval-max").get_attribute("aria-invalid") == "true"
    assert _control(page, 0, "strength").get_attribute("aria-invalid") is None
    assert not posted_jobs(seen)
    _control(page, 1, "interval-min").fill("0.2")
    _control(page, 1, "interval-max").fill("0.8")
    _control(page, 1, "layer_filter").fill("cross_attn, layers.1")
    page.get_by_role("button", name="Generate").click()
    wait_result(page)
    (body,) = posted_jobs(seen)
    sent = [
        {"name": "warm", "strength": 0.7},
        {
            "name": "bright",
            "strength": 1,
            "conditioner_strength": 0.5,
            "interval": [0.2, 0.8],
            "layer_filter": ["cross_attn", "layers.1"],
        },
    ]
    assert body["loras"] == sent
    used = "warm 0.7; bright 1 (conditioner 0.5, sigma 0.2–0.8, not in: cross_attn, layers.1)"
    assert used in page.locator("#result-facts").inner_text()
    item = page.locator("#history li").first
    assert f"LoRA {used}" in item.inner_text()

    # each history button's accessible name begins with its visible text
    for text in ("Show", "Reuse settings", "Edit", "Delete"):
        button = item.get_by_role("button", name=re.compile(f"^{text} .*“a warm pad”"))
        assert button.count() == 1, text
        assert button.evaluate("b => b.getAttribute('aria-label')") is None
        assert button.evaluate("b => b.firstChild.textContent") == text

    # everything changed, then "Reuse settings" puts every setting back, the adapters with their controls
    page.get_by_role("button", name="Remove warm").click()
    page.get_by_role("button", name="Remove bright").click()
    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_label("Steps").fill("9")
    page.get_by_label("Seed", exact=True).fill("1")
    page.get_by_label("Guidance").fill("3")
    page.select_option("#format", "flac")
    item.get_by_role("button", name="Reuse settings").click()
    assert page.get_by_label("Prompt", exact=True).input_value() == "a warm pad"
    assert page.get_by_label("Steps").input_value() == str(STEPS)
    assert page.get_by_label("Seed", exact=True).input_value() == "77"
    assert float(page.get_by_label("Guidance").input_value()) == 1
    assert page.locator("#format").input_value() == "wav"
    assert _adapter_row(page, 0).locator("label").first.inner_text().startswith("1. warm")
    assert _control(page, 0, "strength").input_value() == "0.7"
    assert _adapter_row(page, 1).locator("details").get_attribute("open") is not None  # its controls are shown
    assert _control(page, 1, "conditioner_strength").input_value() == "0.5"
    assert [_control(page, 1, k).input_value() for k in ("interval-min", "interval-max")] == ["0.2", "0.8"]
    assert _control(page, 1, "layer_filter").input_value() == "cross_attn, layers.1"
    page.get_by_role("button", name="Generate").click()
    wait_result(page)
    assert posted_jobs(seen)[-1]["loras"] == sent
    assert not page.problems, page.problems


@needs_browser
def test_the_page_checks_the_prompt_and_every_range_before_sending(live_lora, page):  # noqa: F811
    open_page(page, live_lora.url)
    seen = watch_network(page)
    fields = httpx.get(live_lora.url + "models").json()["fields"]
    page.get_by_label("Prompt", exact=True).fill("   ")
    page.get_by_label("Duration").fill("5000")
    page.get_by_label("Steps").fill("2.5")
    page.get_by_label("Guidance").fill(f"{fields['guidance_scale']['maximum'] + 1:g}")
    page.get_by_role("button", name="Generate").click()
    assert "prompt" in page.locator("#prompt-error").inner_text().lower()
    assert page.evaluate("document.activeElement.id") == "prompt"  # the first mistake, in the form's order
    for name in ("prompt", "duration", "num_inference_steps", "guidance_scale"):
        assert page.locator(f"#{name}").get_attribute("aria-invalid") == "true", name
    d = fields["duration"]
    assert f"between {d['minimum']:g} and {d['maximum']:g} for model" in page.locator("#duration-error").inner_text()
    assert "whole number" in page.locator("#num_inference_steps-error").inner_text()
    assert "Not sent" in page.get_by_role("alert").inner_text()
    assert not posted_jobs(seen)
    # the page's words are the service's, past the schema's static cap too (the model's limit is named)
    too_much = fields["guidance_scale"]["maximum"] + 1
    api = httpx.post(live_lora.url + "jobs", json={"prompt": "x", "guidance_scale": too_much})
    assert api.status_code == 422 and api.json()["detail"][0]["loc"] == ["body", "guidance_scale"]
    assert api.json()["detail"][0]["msg"] == page.locator("#guidance_scale-error").inner_text()
    # corrected, it goes, and the errors are gone
    page.get_by_label("Prompt", exact=True).fill("birdsong")
    page.get_by_label("Duration").fill("1")
    page.get_by_label("Steps").fill(str(STEPS))
    page.get_by_label("Guidance").fill("1")
    page.get_by_role("button", name="Generate").click()
    wait_result(page)
    assert len(posted_jobs(seen)) == 1 and page.locator("#prompt-error").is_hidden()
    assert not page.problems, page.problems


def _column_lit(p, canvas_id: str, frac: float) -> float:
    """The fraction of a canvas column (at `frac` of its width, plot rows only) unlike the plot's background."""
    return p.evaluate(
        """([id, frac]) => {
          const c = document.getElementById(id);
          const x = Math.min(c.width - 1, Math.floor(frac * c.width));
          const h = Math.floor(c.height * 0.8);
          const d = c.getContext('2d').getImageData(x, 0, 1, h).data;
          const bg = getComputedStyle(document.documentElement).getPropertyValue('--plot-bg').trim();
          const [r0, g0, b0] = bg.match(/[0-9a-f]{2}/gi).map((v) => parseInt(v, 16));
          let lit = 0;
          for (let i = Math.floor(h / 4) * 4; i < d.length; i += 4)
            if (Math.abs(d[i] - r0) + Math.abs(d[i + 1] - g0) + Math.abs(d[i + 2] - b0) > 30) lit++;
          return lit / (h - Math.floor(h / 4));
        }""",
        [canvas_id, frac],
    )


@needs_browser
def test_on_a_phone_the_editor_is_compact_and_the_pictures_share_one_timeline(live_lora, browser, source_wav):  # noqa: F811
    path, _ = source_wav
    context = browser.new_context(viewport=PHONE)
    p = context.new_page()
    p.set_default_timeout(60_000)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    open_page(p, live_lora.url)
    load_source(p, path, "Inpaint & continue")

    # with the source's waveform on screen, Generate is on screen too (not ~1,100 px further down)
    p.locator("#source-wave-box").scroll_into_view_if_needed()
    wave = p.locator("#source-wave-box").bounding_box()
    gen = p.get_by_role("button", name="Generate").bounding_box()
    assert 0 <= wave["y"] and wave["y"] + wave["height"] <= gen["y"] and gen["y"] + gen["height"] <= PHONE["height"]
    assert p.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    # shorter than the source: the cut tail's label is whole and inside the canvas
    p.get_by_label("Duration").fill("1")
    p.wait_for_function("() => document.getElementById('source-waveform').dataset.labels.includes('not used')")
    (label,) = json.loads(p.locator("#source-waveform").get_attribute("data-labels"))
    assert label["text"] == "not used (after Duration)" and 0 <= label["x0"] and label["x1"] <= label["w"], label

    # a continuation to 2.5 s: the spectrogram spans the waveform's 2.5 s, the source filling its first 1.5 s
    p.get_by_label("Duration").fill("2.5")
    p.wait_for_function("() => document.getElementById('source-spectrogram').dataset.span === '2.5'")
    assert p.locator("#source-waveform").get_attribute("data-span") == "2.5"
    clip_end = float(p.locator("#source-spectrogram").get_attribute("data-clip-end"))
    assert clip_end == pytest.approx(SOURCE_SECONDS / 2.5, abs=0.01)
    assert _column_lit(p, "source-spectrogram", 0.4) > 0.5  # 1.0 s: the source
    assert _column_lit(p, "source-spectrogram", 0.8) < 0.05  # 2.0 s: not made yet

    # the result is scrolled to and announced
    p.get_by_label("Prompt", exact=True).fill("and on")
    p.get_by_label("Steps").fill(str(STEPS))
    p.get_by_role("button", name="Generate").click()
    wait_result(p)
    p.wait_for_function(
        "() => { const t = document.getElementById('result').getBoundingClientRect().top;"
        " return t >= -1 && t < window.innerHeight / 2; }"
    )
    assert p.locator("#result-status").inner_text().startswith("Result ready: “and on”, 2.5 s")
    assert p.locator("#result-status").get_attribute("aria-live") == "polite"
    # the result's pictures share one timeline too
    assert p.locator("#spectrogram").get_attribute("data-span") == p.locator("#waveform").get_attribute("data-span")
    context.close()
    assert not errors, errors


@needs_browser
def test_a_quiet_clip_is_drawn_to_its_peak(live_lora, page, tmp_path):  # noqa: F811
    t = np.arange(int(1.0 * SR)) / SR
    quiet = 0.004 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1)  # about -48 dBFS
    path = tmp_path / "quiet.wav"
    sf.write(path, np.round(quiet * 32767).astype(np.int16), SR, subtype="PCM_16")
    open_page(page, live_lora.url)
    load_source(page, Path(path), "Audio to audio")
    wave = page.evaluate(CANVAS_STATS, "source-waveform")
    assert wave["lit"] > 0.3, wave  # drawn at its own scale, not a flat line
    assert float(page.locator("#source-waveform").get_attribute("data-gain")) > 100
    assert "peak -48" in page.locator("#source-waveform").get_attribute("aria-label")
    assert not page.problems, page.problems
