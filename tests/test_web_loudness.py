"""The page's loudness control, in headless Chromium (as tests/test_web.py drives it): its bounds come from
GET /models, a target out of them is refused on the page, a target is sent and the result says what the service
did (the gain, the loudness before and after), and "Reuse settings" brings the level back."""

from __future__ import annotations

import re

import httpx

from .test_web import browser as browser  # noqa: F401  (the module's Chromium fixture)
from .test_web import fill_fast, needs_browser, open_page
from .test_web import live as live  # noqa: F401  (the module's served tiny model)
from .test_web import page as page  # noqa: F401


def facts(p) -> str:
    return p.locator("#result-facts").inner_text()


def generate_and_wait(p) -> None:
    before = p.locator("#history li").count()
    p.get_by_role("button", name="Generate").click()
    p.wait_for_function(f"() => document.querySelectorAll('#history li').length > {before}", timeout=120_000)


@needs_browser
def test_a_loudness_target_from_the_page(live, page):  # noqa: F811
    field = httpx.get(live.url + "models").json()["fields"]["loudness"]
    open_page(page, live.url)
    mode = page.get_by_label("Loudness", exact=True)
    assert mode.is_visible() and mode.input_value() == "none"
    assert page.locator("#loudness").is_hidden()  # no target box until a target is chosen
    hint = page.locator("#loudness-hint").inner_text()
    assert f"{field['minimum']:g} to {field['maximum']:g}" in hint

    # out of the service's bounds: refused beside the field, nothing sent
    mode.select_option("lufs")
    target = page.get_by_label("Target loudness (LUFS)")
    assert target.is_visible() and target.input_value() == "-14"
    assert float(target.get_attribute("min")) == field["minimum"]
    fill_fast(page, "waves on a shingle beach", seed=77, steps=10)
    target.fill("-80")
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#loudness-error")
    assert error.is_visible() and "between -70 and 0" in error.inner_text()
    assert target.get_attribute("aria-invalid") == "true"
    assert page.locator("#history li").count() == 0

    # a target in bounds: the result says the gain and where it landed
    target.fill("-20")
    generate_and_wait(page)
    shown = facts(page)
    assert "Loudness" in shown and "toward -20 LUFS" in shown and "now -20 LUFS" in shown, shown
    assert " dB " in shown and error.is_hidden()

    # peak mode, then "Reuse settings" of the first result brings -20 LUFS back
    mode.select_option("peak")
    assert target.is_hidden()
    generate_and_wait(page)
    assert "to a -1 dBFS peak" in facts(page)
    page.locator("#history li").nth(1).get_by_role("button", name=re.compile("^Reuse settings")).click()
    assert mode.input_value() == "lufs" and target.input_value() == "-20"
    assert not page.problems, page.problems
