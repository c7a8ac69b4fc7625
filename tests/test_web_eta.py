"""The playground shows where a queued job stands and about how long it will take (the service's `eta_s`)."""

from __future__ import annotations

import threading

import httpx

from .test_web import FAST_STEPS, browser, fill_fast, live, needs_browser, open_page, page  # noqa: F401


@needs_browser
def test_a_queued_job_shows_its_place_and_eta(live, page, step_hold):  # noqa: F811
    engine = live.app.state.service.engine
    hold = step_hold(engine.model, "a held drone")  # the job ahead stays inside its first step until released
    ahead = threading.Thread(
        target=httpx.post,
        args=(live.url + "predict",),
        kwargs={"json": {"prompt": "a held drone", "duration": 1.0, "num_inference_steps": FAST_STEPS}, "timeout": 120},
    )
    ahead.start()
    try:
        hold.wait_arrival()
        open_page(page, live.url)
        fill_fast(page, "rain behind it")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function(
            "() => /^Queued · position 1 · about (\\d+ s|\\d+ min|to finish)/"
            ".test(document.getElementById('progress-text').textContent)"
        )
    finally:
        hold.release()
        ahead.join(120)
    page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('Done')")
    assert not page.problems, page.problems
