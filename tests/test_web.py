"""The web playground at `/`: served files (always), and the page itself in a real headless Chromium.

The browser tests drive Debian's `chromium` through Playwright's Python API against the
service on a tiny random-weight model served by uvicorn on a free loopback port. They are
skipped, with the reason, where Playwright or the browser is missing. Screenshots go to
artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from stable_audio_service.api import create_app
from stable_audio_service.config import Settings
from stable_audio_service.models.loading import ModelLoadError
from stable_audio_service.models.tiny import make_tiny

from .fake_model import wait_until

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
    # a fake microphone (a beep) that needs no permission prompt, for the recording test
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
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
        assert '<script type="module" src="static/app.js"' in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "script-src 'self'" in r.headers["content-security-policy"]  # the modules are same-origin
        for label in ("Prompt", "Negative prompt", "Duration", "Steps", "Guidance", "Seed", "Format"):
            assert f">{label}" in r.text
        js = c.get("/static/api.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "getReader" in js.text and "EventSource(" not in js.text  # SSE read with fetch, so headers go
        assert c.get("/static/style.css").headers["content-type"].startswith("text/css")
        for bad in ("/static/routes.py", "/static/__init__.py", "/static/..%2Froutes.py", "/static/index.html"):
            assert c.get(bad).status_code == 404, bad
        assert c.get("/models").status_code == 401  # ...while the API still wants the token


WEB_DIR = Path(__file__).resolve().parents[1] / "src" / "stable_audio_service" / "web"
# `import ... from "./x.js"`, `export ... from "./x.js"`, `import "./x.js"` and `import("./x.js")`
MODULE_REF = re.compile(
    r"""(?:^|[;\s])(?:import|export)\s[^;]*?\bfrom\s*["']([^"']+)["']"""
    r"""|(?:^|[;\s])import\s*\(?\s*["']([^"']+)["']""",
    re.M,
)


def _page_modules(c: TestClient) -> dict[str, httpx.Response]:
    """Every module the page loads: its <script type="module"> tags, then each static or dynamic import, as
    the browser resolves them (relative to the importing module's URL), with the response for each."""
    page = c.get("/").text
    assert not re.search(r"<script(?![^>]*\btype=\"module\")[^>]*\bsrc=", page), "a classic script tag"
    todo = [("/" + m) for m in re.findall(r'<script type="module" src="([^"]+)"', page)]
    assert todo == ["/static/app.js"], todo
    seen: dict[str, httpx.Response] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = r = c.get(path)
        assert r.status_code == 200, f"{path}: {r.status_code} (a module the page imports is not served)"
        code = re.sub(r"^\s*//.*$", "", r.text, flags=re.M)  # imports named in comments are not imports
        for m in MODULE_REF.finditer(code):
            ref = m.group(1) or m.group(2)
            assert ref.startswith("./") and ref.endswith(".js"), f"{path} imports {ref!r}: only ./name.js here"
            todo.append(path.rsplit("/", 1)[0] + "/" + ref[2:])
    return seen


def test_every_module_the_page_imports_is_served_as_javascript():
    with TestClient(create_app(Settings(model="/nonexistent"), loader=_no_model)) as c:
        modules = _page_modules(c)
    for path, r in modules.items():
        # a module script with any other type (text/plain, application/octet-stream) is refused by the browser
        assert r.headers["content-type"].startswith("text/javascript"), (path, r.headers["content-type"])
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.text.startswith("//"), f"{path}: no comment at the top saying why the module exists"
        assert r.text.count("\n") <= 500, f"{path}: over 500 lines"
    # no module shipped in the package that the page never loads (nor one it loads that is not shipped)
    assert {p.rsplit("/", 1)[1] for p in modules} == {f.name for f in WEB_DIR.glob("*.js")}
    assert len(modules) > 1


def test_web_files_are_package_data():
    """A non-editable install ships what pyproject's package-data names: every file the page needs must match it."""
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((WEB_DIR.parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["stable_audio_service"]
    for f in sorted(WEB_DIR.iterdir()):
        if f.suffix in (".js", ".css", ".html"):
            rel = f"web/{f.name}"
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in package-data {patterns}"


# ------------------------------------------------------------------ live server --
def _pace_steps_to_subscribers(engine) -> None:
    """The page follows a job over the event stream it opens once POST /jobs has answered, and a tiny model can
    finish a job before that: then the page rightly shows no steps, and a test of its progress would depend on
    the machine's speed. Here every step first waits until each running job has its stream open, so the page
    sees every step however fast the model is (the deadline is only a safety net)."""
    model = engine.model
    step = model.step

    def paced(states):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with engine._cond:
                if all(job.subscribers for job in engine._running):
                    break
            time.sleep(0.002)
        return step(states)

    model.step = paced


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
        _pace_steps_to_subscribers(self.app.state.service.engine)
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


PHONE = {"width": 390, "height": 844}


def narrow_to_phone(p, *canvases: str) -> None:
    """Narrows the viewport to a phone's, then waits until each listed canvas has been redrawn at its new size:
    the page redraws its pictures after a debounced resize, and this waits for that, not for a guessed time."""
    wide = {c: p.evaluate("(id) => document.getElementById(id).width", c) for c in canvases}
    assert min(wide.values()) > PHONE["width"], wide  # else a redraw would not show in the width
    p.set_viewport_size(PHONE)
    p.wait_for_function(
        """([wide, fit]) => Object.entries(wide).every(([id, before]) => {
             const c = document.getElementById(id);
             return c.width !== before && c.width <= fit * (window.devicePixelRatio || 1);
           })""",
        arg=[wide, PHONE["width"]],
    )


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
    # Open 1.0 cannot continue: no long-form note or windows, no long-form words beside the duration
    assert info["longform"] is None and page.locator("#longform-box").is_hidden()
    assert "long-form" not in page.locator("#duration-hint").inner_text()
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
    narrow_to_phone(page, "spectrogram", "waveform")
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
    item.get_by_role("button", name=re.compile("^Reuse settings")).click()
    assert page.locator("#seed").input_value() == "4242"
    shot(page, "desktop-history")
    assert not page.problems, page.problems


@needs_browser
def test_cancel_a_long_job(live, page, step_hold):
    engine = live.app.state.service.engine
    # after its first step the job is held until the page's Cancel reached the service: it cannot finish first
    hold = step_hold(engine.model, "a long ambient drone", after=1)
    open_page(page, live.url)
    fill_fast(page, "a long ambient drone")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        f"() => /^Step \\d+ of {FAST_STEPS}/.test(document.getElementById('progress-text').textContent)"
    )
    shot(page, "desktop-running", full_page=False)
    job_id = page.evaluate("document.body.dataset.jobId")
    page.get_by_role("button", name="Cancel").click()
    job = engine.get(job_id)
    wait_until(lambda: job.cancel_requested or job.status.value == "cancelled", "the page's Cancel reached the service")
    hold.release()
    page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('Cancelled')")
    assert page.get_by_role("button", name="Cancel").is_hidden()
    assert page.get_by_role("button", name="Generate").is_enabled()
    view = httpx.get(f"{live.url}jobs/{job_id}").json()
    assert view["status"] == "cancelled" and view["step"] < FAST_STEPS
    assert page.locator("#result-body").is_hidden() and page.locator("#error").is_hidden()
    assert not page.problems, page.problems


@needs_browser
def test_validation_error_is_shown_as_the_api_words_it(live, page):
    open_page(page, live.url)
    seen = watch_network(page)
    body = {"prompt": "drum loop", "duration": 999, "num_inference_steps": FAST_STEPS}
    api = httpx.post(live.url + "jobs", json=body)
    assert api.status_code == 422
    msg = api.json()["detail"][0]["msg"]
    # out of the model's range: caught on the page, in the service's words, before anything is sent
    fill_fast(page, "drum loop", duration=999)
    page.get_by_label("Prompt", exact=True).press("Control+Enter")  # keyboard submit
    error = page.locator("#duration-error")
    error.wait_for(state="visible")
    said = error.inner_text()
    assert said.startswith("must be between 1 and 30 for model") and msg.startswith(said), (said, msg)
    assert page.locator("#duration").get_attribute("aria-invalid") == "true"
    assert said in page.get_by_role("alert").inner_text()
    assert page.evaluate("document.activeElement.id") == "duration"
    assert not posted_jobs(seen)
    shot(page, "desktop-validation", full_page=False)
    # what only the service checks (control characters): its own words, beside the field
    page.get_by_label("Prompt", exact=True).fill("drum\x01loop")
    page.get_by_label("Duration").fill("1")
    page.get_by_role("button", name="Generate").click()
    page.locator("#prompt-error").wait_for(state="visible")
    assert "control characters" in page.locator("#prompt-error").inner_text()
    assert page.locator("#duration-error").is_hidden()
    assert len(posted_jobs(seen)) == 1


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


# ------------------------------------------------------------------ editing audio --
# Audio-to-audio, inpainting and continuation need a Stable Audio 3 model: a tiny random-weight one.
SOURCE_SECONDS = 1.5
SR = 44100
EDIT_STEPS = 6


@pytest.fixture(scope="module")
def sa3_dir(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-sa3", family="sa3")


@pytest.fixture(scope="module")
def live_sa3(sa3_dir):
    if _browser_missing():
        pytest.skip(_browser_missing())
    server = _Server(Settings(model=str(sa3_dir), batch_wait_ms=0, max_batch_size=2))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def source_wav(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 1.5 s 16-bit stereo WAV at the model's rate: two tones and a little noise, different per channel."""
    t = np.arange(int(SOURCE_SECONDS * SR)) / SR
    rng = np.random.default_rng(7)
    audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1)
    audio += 0.02 * rng.standard_normal(audio.shape)
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
    path = tmp_path_factory.mktemp("audio") / "loop.wav"
    sf.write(path, pcm, SR, subtype="PCM_16")
    return path, pcm


def watch_network(p) -> dict:
    """Every request the page sends (method, path, body) and every response it gets."""
    seen: dict = {"requests": [], "responses": []}
    p.on(
        "request",
        lambda r: seen["requests"].append(
            (r.method, httpx.URL(r.url).path, r.post_data if r.method == "POST" else None)
        ),
    )
    p.on("response", lambda r: seen["responses"].append(r))
    return seen


def posted_jobs(seen: dict) -> list[dict]:
    return [json.loads(body) for method, path, body in seen["requests"] if method == "POST" and path == "/jobs"]


def result_audio(seen: dict) -> np.ndarray:
    """The result's file as the page fetched it from the service (int16, frames x channels)."""
    got = [r for r in seen["responses"] if re.search(r"/jobs/[^/]+/audio$", r.url) and r.status == 200]
    assert got, [r.url for r in seen["responses"]]
    data, rate = sf.read(io.BytesIO(got[-1].body()), dtype="int16", always_2d=True)
    assert rate == SR
    return data


def load_source(p, path: Path, mode: str) -> None:
    p.get_by_role("radio", name=mode).check()
    p.locator("#source-file").set_input_files(str(path))
    p.wait_for_function("() => document.getElementById('source-waveform').dataset.drawn === '1'")


def layer_point(p, frac: float) -> tuple[float, float]:
    box = p.locator("#region-layer").bounding_box()
    return box["x"] + frac * box["width"], box["y"] + box["height"] / 2


def drag(p, start: tuple[float, float], end: tuple[float, float]) -> None:
    p.mouse.move(*start)
    p.mouse.down()
    p.mouse.move(*end, steps=6)
    p.mouse.up()


def regions_shown(p) -> list[tuple[float, float]]:
    """The regions as the list under the waveform shows them (the editable numbers)."""
    values = p.locator("#regions input").evaluate_all("els => els.map(e => Number(e.value))")
    return list(zip(values[0::2], values[1::2], strict=True))


def strip_colour(p, canvas_id: str, seconds: float, view: float) -> tuple[int, int, int]:
    """The colour of the top row of a waveform canvas at `seconds` on a `view`-second timeline."""
    return tuple(
        p.evaluate(
            """([id, frac]) => { const c = document.getElementById(id);
                 const x = Math.min(c.width - 1, Math.floor(frac * c.width));
                 return Array.from(c.getContext('2d').getImageData(x, 1, 1, 1).data.slice(0, 3)); }""",
            [canvas_id, seconds / view],
        )
    )


def wait_result(p) -> None:
    p.wait_for_function(
        "() => document.getElementById('progress-text').textContent.startsWith('Done')", timeout=120_000
    )
    p.wait_for_function("() => document.getElementById('waveform').dataset.drawn === '1'")


@needs_browser
def test_audio_to_audio_from_an_uploaded_file(live_sa3, page, source_wav):
    path, pcm = source_wav
    open_page(page, live_sa3.url)
    seen = watch_network(page)
    record_progress(page)
    assert "LoRA adapters: not available, no adapter directory" in page.locator("#mode-notes").inner_text()
    load_source(page, path, "Audio to audio")
    # the source is shown like a result, and the duration follows it
    assert page.evaluate(CANVAS_STATS, "source-waveform")["lit"] > 0.05
    assert page.evaluate(CANVAS_STATS, "source-spectrogram")["colours"] > 50
    assert "loop.wav" in page.locator("#source-facts").inner_text()
    assert float(page.locator("#duration").input_value()) == SOURCE_SECONDS
    page.wait_for_function("() => document.getElementById('source-player').readyState >= 1")
    assert page.evaluate("document.getElementById('source-player').duration") == pytest.approx(SOURCE_SECONDS, abs=0.01)

    # strength: the model's default, moved with the keyboard, explained
    models = httpx.get(live_sa3.url + "models").json()
    caps = models.get("capabilities") or models["audio_inputs"]
    strength = page.get_by_label(re.compile("^Strength"))
    assert float(strength.input_value()) == pytest.approx(caps["init_noise_level"]["default"])
    strength.focus()
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
    level = float(strength.input_value())
    assert level == pytest.approx(caps["init_noise_level"]["default"] - 4 * float(strength.get_attribute("step")))
    assert "ignores the source" in page.locator("#strength-hint").inner_text()
    assert page.locator("#regions-box").is_hidden()

    page.get_by_label("Prompt", exact=True).fill("the same loop, brighter")
    page.get_by_label("Steps").fill(str(EDIT_STEPS))
    page.get_by_label("Seed", exact=True).fill("11")
    page.get_by_role("button", name="Generate").click()
    wait_result(page)

    # what went out: the file's own bytes, the strength, nothing of inpainting
    (body,) = posted_jobs(seen)
    assert body["init_audio_b64"] == base64.b64encode(path.read_bytes()).decode()
    assert body["init_noise_level"] == pytest.approx(level) and body["duration"] == SOURCE_SECONDS
    assert "inpaint_regions" not in body and "inpaint_audio_b64" not in body
    out = result_audio(seen)
    assert out.shape == (len(pcm), 2)
    # progress as for text-to-audio
    texts = [e["text"] for e in page.evaluate("window.__progress")]
    assert any(t.startswith(f"Step {EDIT_STEPS} of {EDIT_STEPS}") for t in texts), texts

    # before and after: both shown, A/B on one player, keeping its position
    facts = page.locator("#result-facts").inner_text()
    assert "Audio to audio" in facts and f"strength {level:g}" in facts and "loop.wav" in facts
    player = page.locator("#player")
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    after_src = player.evaluate("a => a.currentSrc")
    assert player.evaluate("a => a.duration") == pytest.approx(SOURCE_SECONDS, abs=0.01)
    player.evaluate("a => { a.currentTime = 0.7; }")
    page.get_by_role("button", name="Before (source)").click()
    assert page.get_by_role("button", name="Before (source)").get_attribute("aria-pressed") == "true"
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    assert player.evaluate("a => a.currentSrc") not in (after_src, "")
    assert player.evaluate("a => a.currentTime") == pytest.approx(0.7, abs=0.05)
    shot(page, "desktop-a2a-before")
    page.get_by_role("button", name="After (result)").click()
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    assert player.evaluate("a => a.currentSrc") == after_src
    assert page.locator("#source-body").is_visible() and page.evaluate(CANVAS_STATS, "waveform")["lit"] > 0.05
    shot(page, "desktop-a2a-result")
    assert not page.problems, page.problems


@needs_browser
def test_inpaint_a_region_dragged_on_the_waveform(live_sa3, page, source_wav):
    path, pcm = source_wav
    open_page(page, live_sa3.url)
    seen = watch_network(page)
    load_source(page, path, "Inpaint & continue")
    assert page.locator("#strength-box").is_hidden() and page.locator("#regions-box").is_visible()

    # drag out a region over 30-55 % of the clip
    drag(page, layer_point(page, 0.30), layer_point(page, 0.55))
    ((start, end),) = regions_shown(page)
    assert start == pytest.approx(0.30 * SOURCE_SECONDS, abs=0.02)
    assert end == pytest.approx(0.55 * SOURCE_SECONDS, abs=0.02)
    region = page.locator("#region-layer .region")
    assert region.count() == 1 and f"{start:.2f}" in region.inner_text()

    # move it right by 10 % of the clip: same length, later
    box = region.bounding_box()
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    drag(page, centre, (centre[0] + 0.10 * page.locator("#region-layer").bounding_box()["width"], centre[1]))
    ((moved_start, moved_end),) = regions_shown(page)
    assert moved_start == pytest.approx(start + 0.15, abs=0.02)
    assert moved_end - moved_start == pytest.approx(end - start, abs=0.011)

    # a second region, removed with its ×; a third, removed with the list's button
    drag(page, layer_point(page, 0.05), layer_point(page, 0.15))
    assert len(regions_shown(page)) == 2
    page.locator("#region-layer .region").first.locator(".region-x").click()
    assert regions_shown(page) == [(moved_start, moved_end)]
    page.get_by_role("button", name="Add a region").click()
    assert len(regions_shown(page)) == 2
    page.get_by_role("button", name=re.compile("^Remove region 2")).click()
    assert regions_shown(page) == [(moved_start, moved_end)]

    # times typed in move the shaded span
    left_before = region.evaluate("el => el.getBoundingClientRect().left")
    page.get_by_label("Region 1 start").fill("0.4")
    page.get_by_label("Region 1 end").fill("0.9")
    assert regions_shown(page) == [(0.4, 0.9)]
    assert region.evaluate("el => el.getBoundingClientRect().left") < left_before
    page.get_by_label("Region 1 end").fill("0.2")  # before the start: refused, said why
    assert "after the start" in page.locator("#regions-error").inner_text()
    page.get_by_label("Region 1 end").fill("0.9")
    assert page.locator("#regions-error").is_hidden()
    shot(page, "desktop-inpaint-regions", full_page=False)

    page.get_by_label("Prompt", exact=True).fill("a drum fill")
    page.get_by_label("Steps").fill(str(EDIT_STEPS))
    page.get_by_role("button", name="Generate").click()
    wait_result(page)
    (body,) = posted_jobs(seen)
    assert body["inpaint_regions"] == [{"start_s": 0.4, "end_s": 0.9}] and "init_audio_b64" not in body
    out = result_audio(seen)
    assert out.shape == pcm.shape
    a, b = int(0.4 * SR), int(0.9 * SR)
    keep = np.r_[0:a, b : len(pcm)]
    # outside the region: the source itself (16-bit: at most one step apart); inside: new audio
    assert np.abs(out[keep].astype(int) - pcm[keep]).max() <= 1
    assert np.abs(out[a:b].astype(int) - pcm[a:b]).max() > 1000

    # the regenerated span is marked on the result's waveform (a strip along its top), and only there
    inside = strip_colour(page, "waveform", 0.65, SOURCE_SECONDS)
    outside = strip_colour(page, "waveform", 1.2, SOURCE_SECONDS)
    assert sum(abs(x - y) for x, y in zip(inside, outside, strict=True)) > 60, (inside, outside)
    assert "0.4–0.9 s" in page.locator("#result-facts").inner_text()
    shot(page, "desktop-inpaint-result")
    assert not page.problems, page.problems


@needs_browser
def test_continuation_extends_the_clip(live_sa3, page, source_wav):
    path, pcm = source_wav
    open_page(page, live_sa3.url)
    seen = watch_network(page)
    load_source(page, path, "Inpaint & continue")
    page.get_by_label("Prompt", exact=True).fill("and then it goes on")
    page.get_by_label("Steps").fill(str(EDIT_STEPS))
    # no region and no longer duration: nothing to do, said before sending
    page.get_by_role("button", name="Generate").click()
    assert "Nothing to regenerate" in page.locator("#error").inner_text()
    assert not posted_jobs(seen)

    page.get_by_label("Duration").fill("2.5")
    assert re.search(r"\b1(\.0+)? s after the source", page.locator("#continuation-note").inner_text())
    # the new tail is shown on the source's timeline (2.5 s wide now)
    assert strip_colour(page, "source-waveform", 2.0, 2.5) != strip_colour(page, "source-waveform", 0.7, 2.5)
    page.get_by_role("button", name="Generate").click()
    wait_result(page)
    (body,) = posted_jobs(seen)
    assert body["duration"] == 2.5 and "inpaint_regions" not in body and "inpaint_audio_b64" in body
    out = result_audio(seen)
    assert out.shape == (int(2.5 * SR), 2)
    assert np.abs(out[: len(pcm)].astype(int) - pcm).max() <= 1  # the source, then the new tail
    assert np.abs(out[len(pcm) :]).max() > 100
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(2.5, abs=0.01)
    assert "continued from 1.5 to 2.5 s" in page.locator("#result-facts").inner_text()
    shot(page, "desktop-continuation")

    # the result becomes the next source in one click
    page.get_by_role("button", name="Edit this clip").click()
    page.wait_for_function("() => /2\\.50 s/.test(document.getElementById('source-facts').textContent)")
    assert "and then it goes on" in page.locator("#source-facts").inner_text()
    assert float(page.locator("#duration").input_value()) == 2.5

    # phone width: the editor fits the screen
    narrow_to_phone(page, "source-waveform")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "phone-inpaint")
    assert not page.problems, page.problems


@needs_browser
def test_open1_hides_inpainting_and_says_why(live, page, source_wav):
    path, _ = source_wav
    open_page(page, live.url)
    seen = watch_network(page)
    assert page.get_by_role("radio", name="Inpaint & continue").count() == 0  # not offered at all
    notes = page.locator("#mode-notes").inner_text()
    assert "no inpainting" in notes and "barely changes the output" in notes
    load_source(page, path, "Audio to audio")
    assert page.locator("#strength-box").is_hidden()  # no strength to set on this model
    shot(page, "desktop-open1-edit", full_page=False)
    fill_fast(page, "rain", steps=10, duration=1.0)
    page.get_by_role("button", name="Generate").click()
    wait_result(page)
    (body,) = posted_jobs(seen)
    assert "init_audio_b64" in body and "init_noise_level" not in body
    assert page.locator("#error").is_hidden()
    assert not page.problems, page.problems


@needs_browser
def test_too_large_upload_shows_the_limit_without_a_request(sa3_dir, browser, source_wav):
    path, _ = source_wav
    limit = 100_000  # the 1.5 s stereo WAV is about 265 kB
    server = _Server(Settings(model=str(sa3_dir), batch_wait_ms=0, max_upload_bytes=limit))
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        p = context.new_page()
        p.set_default_timeout(60_000)
        open_page(p, server.url)
        seen = watch_network(p)
        p.get_by_role("radio", name="Audio to audio").check()
        # dropped on the page, as a person would drag it from a file manager
        p.evaluate(
            """([b64, name]) => {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const dt = new DataTransfer();
              dt.items.add(new File([bytes], name, {type: 'audio/wav'}));
              document.getElementById('dropzone').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""",
            [base64.b64encode(path.read_bytes()).decode(), path.name],
        )
        error = p.locator("#source-error")
        error.wait_for(state="visible")
        assert f"{limit} bytes" in error.inner_text() and f"{path.stat().st_size} bytes" in error.inner_text()
        assert p.locator("#source-body").is_hidden()
        fill_fast(p, "anything", steps=EDIT_STEPS, duration=1.0)
        p.get_by_role("button", name="Generate").click()
        assert "Choose a source first" in p.locator("#error").inner_text()
        assert f"{limit} bytes" in p.locator("#error").inner_text()
        shot(p, "desktop-too-large", full_page=False)
        assert not [r for r in seen["requests"] if r[0] == "POST"], seen["requests"]
        context.close()
    finally:
        server.stop()


@needs_browser
def test_record_from_the_microphone(live_sa3, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, permissions=["microphone"])
    p = context.new_page()
    p.set_default_timeout(60_000)
    open_page(p, live_sa3.url)
    seen = watch_network(p)
    p.get_by_role("radio", name="Audio to audio").check()
    began = time.monotonic()  # the whole recording lies between this and the drawn source
    p.get_by_role("button", name="Record from the microphone").click()
    # 1.5 s recorded by the page's own count: compared as a number, so a busy page that skips a tick still matches
    p.wait_for_function(
        "() => { const m = /Recording (\\d+(?:\\.\\d+)?) s/.exec(document.getElementById('record-status').textContent);"
        " return m !== null && Number(m[1]) >= 1.5; }"
    )
    p.get_by_role("button", name="Stop recording").click()
    p.wait_for_function("() => document.getElementById('source-waveform').dataset.drawn === '1'")
    watched = time.monotonic() - began
    facts = p.locator("#source-facts").inner_text()
    assert "Recording" in facts and "converted to 16-bit WAV" in facts, facts
    # the player reads the WAV's header asynchronously: wait for its metadata, then check the length
    p.wait_for_function("() => Number.isFinite(document.getElementById('source-player').duration)")
    seconds = p.evaluate("document.getElementById('source-player').duration")
    # what the page counted (less the recorder's start-up), and no longer than the test watched it record
    assert 1.0 < seconds <= watched + 0.25, (seconds, watched)
    assert p.evaluate(CANVAS_STATS, "source-waveform")["lit"] > 0.01  # the fake microphone beeps
    fill_fast(p, "hum", steps=EDIT_STEPS, duration=1.0)
    p.get_by_role("button", name="Generate").click()
    wait_result(p)
    (body,) = posted_jobs(seen)
    assert base64.b64decode(body["init_audio_b64"])[:4] == b"RIFF"  # what the service reads, not WebM
    context.close()
