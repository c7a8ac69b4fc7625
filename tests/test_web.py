"""The web playground at `/`: served files (always), and the page itself in a real headless Chromium.

The browser tests drive Debian's `chromium` through Playwright's Python API against the
service on a tiny random-weight model served by uvicorn on a free loopback port. They are
skipped, with the reason, where Playwright or the browser is missing. Screenshots go to
artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from stable_audio_service.api import create_app
from stable_audio_service.config import Settings
from stable_audio_service.models.loading import ModelLoadError

CHROMIUM = os.environ.get("STABLE_AUDIO_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
FAST_STEPS = 30  # enough steps that the page sees several even on a fast machine


def _browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set STABLE_AUDIO_TEST_CHROMIUM)"
    return None


needs_browser = pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")


# ------------------------------------------------------------------ no browser --
def _no_model(settings):
    raise ModelLoadError("no model in this test")


def test_page_and_static_files_are_served():
    with TestClient(create_app(Settings(model="/nonexistent", api_key="s3cret"), loader=_no_model)) as c:
        r = c.get("/")  # no token: the page itself is public even when the API is not
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert '<script src="static/app.js"' in r.text and "default-src 'self'" in r.headers["content-security-policy"]
        for label in ("Prompt", "Negative prompt", "Duration", "Steps", "Guidance", "Seed", "Format"):
            assert f">{label}" in r.text
        js = c.get("/static/app.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "getReader" in js.text and "EventSource(" not in js.text  # SSE read with fetch, so headers go
        assert c.get("/static/style.css").headers["content-type"].startswith("text/css")
        for bad in ("/static/routes.py", "/static/__init__.py", "/static/..%2Froutes.py", "/static/index.html"):
            assert c.get(bad).status_code == 404, bad
        assert c.get("/models").status_code == 401  # ...while the API still wants the token


# ------------------------------------------------------------------ live server --
class _Server:
    def __init__(self, settings: Settings) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=f"web-test-{port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        assert self.app.state.service.loaded.wait(120), "model did not load"
        assert self.app.state.service.status == "ok", self.app.state.service.reason
        self.url = f"http://127.0.0.1:{port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def _settings(tiny_dir: Path, **extra) -> Settings:
    return Settings(model=str(tiny_dir), batch_wait_ms=0, max_batch_size=2, window="fit", **extra)


@pytest.fixture(scope="module")
def live(tiny_dir):
    if _browser_missing():
        pytest.skip(_browser_missing())
    server = _Server(_settings(tiny_dir))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    if _browser_missing():
        pytest.skip(_browser_missing())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.set_default_timeout(60_000)
    problems: list[str] = []
    p.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    p.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    p.problems = problems
    yield p
    context.close()


def shot(p, name: str, full_page: bool = True) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    p.screenshot(path=str(path), full_page=full_page)
    return path


def open_page(p, url: str) -> None:
    p.goto(url)
    p.wait_for_function("() => document.body.dataset.ready === '1'")


def record_progress(p) -> None:
    """Keep every progress text and bar value the page shows, in order."""
    p.evaluate(
        """() => {
        window.__progress = [];
        // Every text the status line showed (each record keeps its own text node), and the bar's
        // value and max at each of its changes.
        new MutationObserver((records) => {
          for (const r of records) for (const n of r.addedNodes) window.__progress.push({text: n.data});
        }).observe(document.getElementById('progress-text'), {childList: true});
        const bar = document.getElementById('progress');
        window.__bar = [];
        new MutationObserver(() => window.__bar.push([bar.hasAttribute('value') ? bar.value : null, bar.max]))
          .observe(bar, {attributes: true});
      }"""
    )


CANVAS_STATS = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  let lit = 0;
  const [r0, g0, b0] = [d[0], d[1], d[2]];
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] === 0) continue;
    if (Math.abs(d[i] - r0) + Math.abs(d[i + 1] - g0) + Math.abs(d[i + 2] - b0) > 30) lit++;
    colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  }
  return {w: c.width, h: c.height, lit: lit / (c.width * c.height), colours: colours.size,
          drawn: c.dataset.drawn === '1'};
}"""


def fill_fast(p, prompt: str, *, seed: int | None = None, steps: int = FAST_STEPS, duration: float = 1.0) -> None:
    p.get_by_label("Prompt", exact=True).fill(prompt)
    p.get_by_label("Duration").fill(str(duration))
    p.get_by_label("Steps").fill(str(steps))
    if seed is not None:
        p.get_by_label("Seed", exact=True).fill(str(seed))


@needs_browser
def test_form_limits_and_defaults_come_from_models(live, page):
    open_page(page, live.url)
    info = httpx.get(live.url + "models").json()["fields"]
    for name in ("duration", "num_inference_steps", "guidance_scale"):
        el = page.locator(f"#{name}")
        assert float(el.get_attribute("min")) == info[name]["minimum"]
        assert float(el.get_attribute("max")) == info[name]["maximum"]
        assert float(el.input_value()) == info[name]["default"]
    assert page.locator("#format option").all_inner_texts() == [c.upper() for c in info["format"]["choices"]]
    assert page.locator("#format").input_value() == info["format"]["default"]
    assert page.locator("#prompt").get_attribute("maxlength") == str(info["prompt"]["max_length"])
    # the dice gives a seed within the service's bounds, keyboard-reachable
    page.get_by_role("button", name="Random seed").focus()
    page.keyboard.press("Enter")
    seed = int(page.locator("#seed").input_value())
    assert info["seed"]["minimum"] <= seed <= info["seed"]["maximum"]
    assert not page.problems, page.problems


@needs_browser
def test_generate_shows_progress_audio_and_pictures(live, page):
    open_page(page, live.url)
    record_progress(page)
    fill_fast(page, "rain on a tin roof, slow", seed=4242)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.getElementById('spectrogram').dataset.drawn === '1'", timeout=120_000)

    # progress moved: the live step events arrived in order, and the bar followed them
    progress = page.evaluate("window.__progress")
    texts = [e["text"] for e in progress]
    steps = [(int(m[1]), int(m[2])) for t in texts if (m := re.match(r"Step (\d+) of (\d+)", t))]
    assert len({s for s, _ in steps}) >= 3, texts
    assert [s for s, _ in steps] == sorted(s for s, _ in steps)
    assert steps[-1] == (FAST_STEPS, FAST_STEPS) and all(t == FAST_STEPS for _, t in steps)
    assert texts[0].startswith("Submitting") and any(t.startswith("Queued") or t.startswith("Starting") for t in texts)
    assert texts[-1].startswith("Done in")
    bar = [v for v, mx in page.evaluate("window.__bar") if v is not None and mx == FAST_STEPS]
    assert len(set(bar)) >= 3 and bar == sorted(bar) and bar[-1] == FAST_STEPS, bar

    # a playable audio source of the right duration
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    audio = page.evaluate(
        "() => { const a = document.getElementById('player');"
        " return {duration: a.duration, src: a.currentSrc, error: a.error && a.error.code,"
        " canPlay: a.canPlayType('audio/wav')}; }"
    )
    assert audio["error"] is None and audio["src"].startswith("blob:") and audio["canPlay"]
    assert audio["duration"] == pytest.approx(1.0, abs=0.01)

    # the pictures are drawn, not blank
    spec = page.evaluate(CANVAS_STATS, "spectrogram")
    wave = page.evaluate(CANVAS_STATS, "waveform")
    assert spec["drawn"] and spec["w"] > 200 and spec["lit"] > 0.5 and spec["colours"] > 50, spec
    assert wave["drawn"] and wave["lit"] > 0.05, wave

    # seed, timings, download name from the prompt
    facts = page.locator("#result-facts").inner_text()
    assert "4242" in facts and "total" in facts and "denoise" in facts
    link = page.locator("#download")
    assert link.get_attribute("download") == "rain-on-a-tin-roof-slow-seed4242.wav"
    with page.expect_download() as dl:
        link.click()
    assert dl.value.suggested_filename == "rain-on-a-tin-roof-slow-seed4242.wav"
    assert Path(dl.value.path()).read_bytes()[:4] == b"RIFF"
    shot(page, "desktop-result")

    # phone width: one column, nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(400)  # the pictures redraw after a resize
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate(CANVAS_STATS, "spectrogram")["lit"] > 0.5
    shot(page, "phone-result")

    # history survives a reload and replays with its pictures
    page.set_viewport_size({"width": 1280, "height": 900})
    open_page(page, live.url)
    item = page.locator("#history li").first
    assert "rain on a tin roof, slow" in item.inner_text() and "seed 4242" in item.inner_text()
    assert page.locator("#result-body").is_hidden()
    item.get_by_role("button", name=re.compile("^Show")).click()
    page.wait_for_function("() => document.getElementById('spectrogram').dataset.drawn === '1'")
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(1.0, abs=0.01)
    item.get_by_role("button", name=re.compile("^Put the settings")).click()
    assert page.locator("#seed").input_value() == "4242"
    shot(page, "desktop-history")
    assert not page.problems, page.problems


@needs_browser
def test_cancel_a_long_job(live, page):
    open_page(page, live.url)
    fill_fast(page, "a long ambient drone", steps=200, duration=30.0)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => /^Step \\d+ of 200/.test(document.getElementById('progress-text').textContent)")
    shot(page, "desktop-running", full_page=False)
    job_id = page.evaluate("document.body.dataset.jobId")
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('Cancelled')")
    assert page.get_by_role("button", name="Cancel").is_hidden()
    assert page.get_by_role("button", name="Generate").is_enabled()
    view = httpx.get(f"{live.url}jobs/{job_id}").json()
    assert view["status"] == "cancelled" and view["step"] < 200
    assert page.locator("#result-body").is_hidden() and page.locator("#error").is_hidden()
    assert not page.problems, page.problems


@needs_browser
def test_validation_error_is_shown_as_the_api_words_it(live, page):
    open_page(page, live.url)
    body = {"prompt": "drum loop", "duration": 999, "num_inference_steps": FAST_STEPS}
    api = httpx.post(live.url + "jobs", json=body)
    assert api.status_code == 422
    msg = api.json()["detail"][0]["msg"]
    fill_fast(page, "drum loop", duration=999)
    page.get_by_label("Prompt", exact=True).press("Control+Enter")  # keyboard submit
    error = page.locator("#duration-error")
    error.wait_for(state="visible")
    assert error.inner_text() == msg
    assert page.locator("#duration").get_attribute("aria-invalid") == "true"
    assert msg in page.get_by_role("alert").inner_text()
    assert page.evaluate("document.activeElement.id") == "duration"
    shot(page, "desktop-validation", full_page=False)
    # a blank prompt: the service's own words again
    page.get_by_label("Prompt", exact=True).fill("   ")
    page.get_by_label("Duration").fill("1")
    page.get_by_role("button", name="Generate").click()
    page.locator("#prompt-error").wait_for(state="visible")
    assert "blank" in page.locator("#prompt-error").inner_text()
    assert page.locator("#duration-error").is_hidden()


@needs_browser
def test_token_field_when_the_api_needs_one(tiny_dir, browser):
    server = _Server(_settings(tiny_dir, api_key="s3cret-token"))
    try:
        assert httpx.get(server.url + "models").status_code == 401
        context = browser.new_context(viewport={"width": 390, "height": 844})
        p = context.new_page()
        p.set_default_timeout(60_000)
        p.goto(server.url)
        token = p.get_by_label(re.compile("^Bearer token"))
        token.wait_for(state="visible")  # the page loaded without a token and asks for one
        assert "missing or wrong bearer token" in p.get_by_role("alert").inner_text()
        shot(p, "phone-token", full_page=False)
        token.fill("s3cret-token")
        token.press("Enter")
        p.wait_for_function("() => document.body.dataset.ready === '1'")
        fill_fast(p, "birds in a forest", steps=10)
        p.get_by_role("button", name="Generate").click()  # POST, SSE (fetch + header) and GET all authorised
        p.wait_for_function("() => document.getElementById('spectrogram').dataset.drawn === '1'", timeout=120_000)
        assert p.locator("#error").is_hidden()
        context.close()
    finally:
        server.stop()
