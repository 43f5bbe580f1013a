"""The search page in a real headless Chromium (Debian's), driven by Playwright, against a real server.

Screenshots land in test-artifacts/. Without /usr/bin/chromium the module is skipped, unless
PE_SEARCH_REQUIRE_BROWSER is set (CI sets it, so a missing browser fails the run).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import requests

from tests.support.images import encode, image_object, photo
from tests.support.server import launch, wait_ready

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# A real server process too, so slow as well as browser.
pytestmark = [pytest.mark.browser, pytest.mark.slow]
if CHROMIUM is None:
    if os.environ.get("PE_SEARCH_REQUIRE_BROWSER"):
        raise RuntimeError("PE_SEARCH_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402 - only once a browser exists

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - yields (url, {id: file path})
    workdir = tmp_path_factory.mktemp("browser")
    server = launch(workdir, "PE-Core-T16-384")
    try:
        problem = wait_ready(server, 240)
        assert problem is None, f"{problem}\n{server.log_tail()}"
        files = {}
        for seed in range(10):
            path = workdir / f"holiday-{seed}.jpg"
            path.write_bytes(encode(photo(480, 360, seed=3000 + seed), "JPEG"))
            body = {
                "image": image_object(path.read_bytes()),
                "metadata": {"trip": "coast" if seed % 2 else "alps", "n": seed},
            }
            files[requests.post(f"{server.url}/images", json=body, timeout=60).json()["id"]] = path
        requests.post(f"{server.url}/collections", json={"name": "empty"}, timeout=30)
        yield server.url, files
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(site):  # noqa: ANN001, ANN201
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


def loaded_images(page) -> int:  # noqa: ANN001
    return page.evaluate(
        "[...document.querySelectorAll('#results img')].filter(i => i.complete && i.naturalWidth > 0).length"
    )


def test_type_a_query_and_results_load(page, site) -> None:  # noqa: ANN001
    url, files = site
    page.goto(url + "/")
    expect(page.locator("#status")).to_contain_text("10 images in")
    page.keyboard.press("/")
    expect(page.locator("#q")).to_be_focused()
    page.keyboard.type("a photo of a mountain lake")
    page.keyboard.press("Enter")
    expect(page.locator("#results li")).to_have_count(10)
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert loaded_images(page) == 10
    assert re.search(r"\?q=a\+photo\+of\+a\+mountain\+lake$", page.url)
    expect(page.locator("#status")).to_contain_text("10 results")
    page.screenshot(path=str(ARTIFACTS / "search-text.png"), full_page=True)


def test_upload_an_image_and_it_finds_itself_first(page, site) -> None:  # noqa: ANN001
    url, files = site
    image_id, path = next(iter(files.items()))
    page.goto(url + "/")
    page.set_input_files("#file", str(path))
    first = page.locator("#results li button").first
    expect(first).to_have_attribute("data-id", str(image_id))
    assert float(first.get_attribute("data-score")) > 0.999
    expect(page.locator("#query-info")).to_contain_text("Images like yours")
    page.screenshot(path=str(ARTIFACTS / "search-image.png"), full_page=True)


def test_click_opens_detail_and_more_like_this(page, site) -> None:  # noqa: ANN001
    url, files = site
    target = list(files)[3]
    page.goto(f"{url}/?q=holiday")
    page.locator(f"#results button[data-id='{target}']").click()
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-meta")).to_contain_text("trip")
    expect(page.locator("#detail-meta")).to_contain_text("480 × 360")
    page.wait_for_function("document.getElementById('detail-image').naturalWidth > 0")
    page.screenshot(path=str(ARTIFACTS / "detail.png"))
    page.locator("#more-like-this").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#results li button").first).to_have_attribute("data-id", str(target))
    assert page.url.endswith(f"/?id={target}")
    page.keyboard.press("Tab")  # the grid is reachable from the keyboard
    page.go_back()
    expect(page.locator("#q")).to_have_value("holiday")


def test_empty_collection_and_shared_url(page, site) -> None:  # noqa: ANN001
    url, _ = site
    page.goto(f"{url}/?q=anything&collection=empty")
    expect(page.locator("#status")).to_contain_text("No images match")
    expect(page.locator("#collection")).to_have_value("empty")
    page.goto(f"{url}/?q=anything&collection=missing")
    expect(page.locator("#status")).to_contain_text("No collection named 'missing'")
    page.screenshot(path=str(ARTIFACTS / "error-state.png"))


def test_page_uses_no_external_resources(site) -> None:  # noqa: ANN001
    url, _ = site
    html = requests.get(url + "/", timeout=10).text + requests.get(url + "/static/app.js", timeout=10).text
    assert not re.search(r"https?://(?!127\.0\.0\.1)", html)
