"""The page's takes (`num_outputs`) and long-form audio, in headless Chromium (as tests/test_web.py drives it).

Takes: a 2-take request shows a grid of two players with their own seeds, each from its own
`/jobs/{id}/audio?index=i`, with its own download; one take keeps the single player; "Reuse settings" brings the
number of takes back. Long-form: on a tiny Stable Audio 3 model whose longest clip is capped at 1 s (so a 2.5 s
request is three short windows of a few steps), the page asks for it through /jobs, shows the progress window by
window and one player; what long-form audio cannot have (several takes, a loudness level, a source) is switched
off or refused on the page with the reason, never sent for a 422.

One tiny SA3 model is served for the whole module and one Chromium drives it (tests/test_web.py's fixtures).
"""

from __future__ import annotations

import io
import re

import httpx
import numpy as np
import pytest
import soundfile as sf

from stable_audio_service.config import Settings
from stable_audio_service.models.tiny import make_tiny

from .test_web import (  # noqa: F401
    PHONE,
    _browser_missing,
    _Server,
    browser,
    needs_browser,
    open_page,
    page,
    posted_jobs,
    record_progress,
    shot,
    watch_network,
)

LONGEST = 1.0  # the model's longest clip here (Settings.max_duration): long-form windows of 1 s
LONGFORM_MAX = 4.0  # STABLE_AUDIO_MAX_LONGFORM_S here
STEPS = 3


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    if _browser_missing():
        pytest.skip(_browser_missing())
    model = make_tiny(tmp_path_factory.mktemp("models") / "tiny-sa3", family="sa3", structure="small")
    settings = Settings(
        model=str(model),
        batch_wait_ms=0,
        max_batch_size=2,
        window="fit",
        max_duration=LONGEST,
        max_longform_s=LONGFORM_MAX,
    )
    server = _Server(settings)
    yield server
    server.stop()


def fill(p, prompt: str, *, duration: float, seed: int, takes: int = 1) -> None:
    p.get_by_label("Prompt", exact=True).fill(prompt)
    p.get_by_label("Duration").fill(f"{duration:g}")
    p.get_by_label("Steps").fill(str(STEPS))
    p.get_by_label("Seed", exact=True).fill(str(seed))
    p.get_by_label("Takes", exact=True).fill(str(takes))


def generate_and_wait(p) -> None:
    before = p.locator("#history li").count()
    p.get_by_role("button", name="Generate").click()
    p.wait_for_function(f"() => document.querySelectorAll('#history li').length > {before}", timeout=60_000)


def take_responses(seen: dict) -> dict[int, bytes]:
    """Each take's file as the page fetched it, by its `index`."""
    out = {}
    for r in seen["responses"]:
        m = re.search(r"/jobs/[^/]+/audio\?index=(\d+)$", r.url)
        if m and r.status == 200:
            out[int(m[1])] = r.body()
    return out


@needs_browser
def test_two_takes_show_as_a_grid_and_reuse_restores_them(live, page):  # noqa: F811
    fields = httpx.get(live.url + "models").json()["fields"]["num_outputs"]
    open_page(page, live.url)
    seen = watch_network(page)
    takes = page.get_by_label("Takes", exact=True)
    assert takes.is_visible() and takes.is_enabled() and takes.input_value() == "1"
    assert (takes.get_attribute("min"), takes.get_attribute("max")) == (
        str(fields["minimum"]),
        str(fields["maximum"]),
    )

    # out of GET /models' bounds: refused beside the field, nothing sent
    fill(page, "two takes of rain", duration=1, seed=7, takes=fields["maximum"] + 1)
    page.get_by_role("button", name="Generate").click()
    assert f"between 1 and {fields['maximum']}" in page.locator("#num_outputs-error").inner_text()
    assert takes.get_attribute("aria-invalid") == "true" and not posted_jobs(seen)

    takes.fill("2")
    generate_and_wait(page)
    assert posted_jobs(seen)[-1]["num_outputs"] == 2
    grid = page.locator("#takes li")
    assert grid.count() == 2 and page.locator("#takes-box-result").is_visible()
    assert page.locator("#player").is_hidden()  # each take has its own player instead
    assert [grid.nth(i).get_attribute("data-seed") for i in range(2)] == ["7", "8"]
    assert [grid.nth(i).locator(".take-title").inner_text() for i in range(2)] == ["Take 1 · seed 7", "Take 2 · seed 8"]
    urls = [grid.nth(i).locator("audio").get_attribute("data-url") for i in range(2)]
    assert urls[0] != urls[1] and urls[0].rsplit("?", 1)[0] == urls[1].rsplit("?", 1)[0]
    assert [u.rsplit("?", 1)[1] for u in urls] == ["index=0", "index=1"]
    # both files came from the service, each its own take (different seeds: different audio)
    files = take_responses(seen)
    assert sorted(files) == [0, 1]
    clips = [sf.read(io.BytesIO(files[i]), dtype="int16")[0] for i in (0, 1)]
    assert clips[0].shape == clips[1].shape and not np.array_equal(clips[0], clips[1])
    # every take plays in the page, from its own blob, and downloads under its own seed
    for i in range(2):
        page.wait_for_function(f"() => document.querySelectorAll('#takes audio')[{i}].readyState >= 1")
    players = grid.locator("audio").evaluate_all("els => els.map(a => [a.currentSrc, a.duration, a.error])")
    assert players[0][0] != players[1][0] and all(src.startswith("blob:") for src, _, _ in players)
    assert all(d == pytest.approx(1.0, abs=0.01) and err is None for _, d, err in players), players
    names = [grid.nth(i).get_by_role("link", name=re.compile("^Download")).get_attribute("download") for i in range(2)]
    assert names == ["two-takes-of-rain-seed7.wav", "two-takes-of-rain-seed8.wav"]
    assert "7–8 (2 takes)" in page.locator("#result-facts").inner_text()
    # the pictures follow the take picked
    grid.nth(1).get_by_role("button", name=re.compile("^Pictures")).click()
    assert grid.nth(1).get_by_role("button", name=re.compile("^Pictures")).get_attribute("aria-pressed") == "true"
    page.wait_for_function("() => document.getElementById('waveform').dataset.drawn === '1'")
    assert "2 takes" in page.locator("#history li").first.inner_text()
    shot(page, "desktop-takes")
    page.set_viewport_size(PHONE)  # the grid folds to one column on a phone, nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.set_viewport_size({"width": 1280, "height": 900})

    # one take: the single player and download, as ever, and no num_outputs sent
    takes.fill("1")
    page.get_by_label("Seed", exact=True).fill("9")
    generate_and_wait(page)
    assert "num_outputs" not in posted_jobs(seen)[-1]
    assert page.locator("#takes-box-result").is_hidden() and page.locator("#player").is_visible()
    assert page.locator("#download").get_attribute("download") == "two-takes-of-rain-seed9.wav"

    # "Reuse settings" of the 2-take entry brings 2 takes (and its first seed) back
    page.locator("#history li").nth(1).get_by_role("button", name=re.compile("^Reuse settings")).click()
    assert takes.input_value() == "2" and page.locator("#seed").input_value() == "7"
    page.locator("#history li").nth(1).get_by_role("button", name=re.compile("^Show")).click()
    page.wait_for_function("() => document.querySelectorAll('#takes li').length === 2")
    assert not page.problems, page.problems


@needs_browser
def test_long_form_shows_progress_by_window_and_one_player(live, page):  # noqa: F811
    open_page(page, live.url)
    seen = watch_network(page)
    box = page.locator("#longform-box")
    assert box.is_visible() and f"up to {LONGFORM_MAX:g} s" in page.locator("#duration-hint").inner_text()
    # asked for first, then switched off by the long-form duration: several takes and a loudness level
    fill(page, "a slow drone", duration=1, seed=11, takes=3)
    page.get_by_label("Loudness", exact=True).select_option("peak")
    page.get_by_label("Duration").fill("2.5")
    page.locator("#longform-advanced summary").click()
    page.get_by_label("Overlap").fill("0.25")
    note = page.locator("#longform-note").inner_text()
    assert "3 windows of 1 s" in note and "0.25 s" in note, note
    takes, level = page.get_by_label("Takes", exact=True), page.get_by_label("Loudness", exact=True)
    assert takes.is_disabled() and takes.input_value() == "1"
    assert "one take at a time" in page.locator("#num_outputs-hint").inner_text()
    assert level.is_disabled() and level.input_value() == "none"  # what long-form audio is: as generated
    assert "Not with long-form audio" in page.locator("#loudness-hint").inner_text()
    shot(page, "desktop-longform-form", full_page=False)

    # the windows' own rules, checked on the page first
    page.get_by_label("Overlap").fill("0.8")
    page.get_by_role("button", name="Generate").click()
    assert "at most half the window (0.5 s)" in page.locator("#overlap_s-error").inner_text()
    page.get_by_label("Overlap").fill("0.25")
    page.get_by_label("Duration").fill(f"{LONGFORM_MAX + 1:g}")
    page.get_by_role("button", name="Generate").click()
    assert f"(up to {LONGFORM_MAX:g} s as long-form audio)" in page.locator("#duration-error").inner_text()
    assert not posted_jobs(seen)

    page.get_by_label("Duration").fill("2.5")
    record_progress(page)
    generate_and_wait(page)
    sent = posted_jobs(seen)[-1]
    assert sent["duration"] == 2.5 and sent["overlap_s"] == 0.25 and "window_s" not in sent
    assert "num_outputs" not in sent and "loudness" not in sent  # switched off: not sent, so no 422
    texts = [e["text"] for e in page.evaluate("window.__progress")]
    windows = [int(m[1]) for t in texts if (m := re.search(r"window (\d) of 3", t))]
    assert windows and windows == sorted(windows) and set(windows) == {1, 2, 3}, texts
    steps = [t for t in texts if t.startswith("Step ")]
    assert steps[-1].startswith(f"Step {3 * STEPS} of {3 * STEPS} · window 3 of 3"), steps
    assert texts[-1].startswith("Done in")
    # one clip of the whole length, in the one player
    assert page.locator("#takes-box-result").is_hidden() and page.locator("#player").is_visible()
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(2.5, abs=0.01)
    facts = page.locator("#result-facts").inner_text()
    assert "3 windows of 1 s, each continuing 0.25 s" in facts, facts
    item = page.locator("#history li").first.inner_text()
    assert f"{STEPS} steps" in item and "long-form" in item, item  # one window's steps, not all of them

    # a short duration again: takes and the level come back as they were chosen
    page.get_by_label("Duration").fill("1")
    assert takes.is_enabled() and takes.input_value() == "3"
    assert level.is_enabled() and level.input_value() == "peak"
    # Reuse settings brings the long clip's overlap back, and long-form switches them off again
    page.locator("#history li").first.get_by_role("button", name=re.compile("^Reuse settings")).click()
    assert page.get_by_label("Overlap").input_value() == "0.25" and takes.is_disabled()

    # long-form takes no source: in an editing mode the duration is refused with the reason, nothing sent
    page.get_by_role("radio", name="Audio to audio").check()
    assert box.is_hidden()
    page.get_by_label("Duration").fill("2.5")
    page.get_by_label("Prompt", exact=True).press("Control+Enter")
    error = page.locator("#duration-error")
    assert "made from text only: it takes no source" in error.inner_text()
    assert len(posted_jobs(seen)) == 1
    assert not page.problems, page.problems
