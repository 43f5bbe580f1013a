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


def search_bodies(page) -> list[dict]:  # noqa: ANN001
    """Every POST /search body the page sends from now on (a live list)."""
    bodies: list[dict] = []
    page.on(
        "request",
        lambda r: bodies.append(r.post_data_json) if r.method == "POST" and r.url.endswith("/search") else None,
    )
    return bodies


def result_ids(page) -> list[int]:  # noqa: ANN001
    return [int(i) for i in page.eval_on_selector_all("#results li button", "els => els.map(e => e.dataset.id)")]


def test_load_more_pages_by_cursor_without_resending_the_query(page, site) -> None:  # noqa: ANN001
    shared_page = page
    url, files = site
    # A short window of its own, so the sentinel is off screen and "Load more" is what pages.
    page = shared_page.context.browser.new_page(viewport={"width": 1280, "height": 500})
    try:
        bodies = search_bodies(page)
        page.goto(f"{url}/?q=holiday&k=4")
        expect(page.locator("#results li")).to_have_count(4)
        while page.locator("#more").is_visible():
            before = page.locator("#results li").count()
            page.locator("#more").click()
            expect(page.locator("#results li")).not_to_have_count(before)
        page.locator("#sentinel").scroll_into_view_if_needed()
        expect(page.locator("#results li")).to_have_count(10)
        ids = result_ids(page)
        assert sorted(ids) == sorted(files)
        assert bodies[0]["text"] == "holiday" and "cursor" not in bodies[0]
        assert len(bodies) == 3 and all(set(b) == {"cursor", "top_k"} for b in bodies[1:])
        whole = requests.post(f"{url}/search", json={"text": "holiday", "top_k": 10}, timeout=30).json()
        assert ids == [r["id"] for r in whole["results"]]
    finally:
        page.close()


def test_order_by_date(page, site) -> None:  # noqa: ANN001
    url, files = site
    page.goto(f"{url}/?q=holiday")
    expect(page.locator("#results li")).to_have_count(10)
    page.select_option("#order", "-created_at")
    page.wait_for_url(re.compile(r"order=-created_at"))
    # Added one after another: newest first is highest id first.
    expect(page.locator("#results li button").first).to_have_attribute("data-id", str(max(files)))
    expect(page.locator("#results li")).to_have_count(10)
    assert result_ids(page) == sorted(files, reverse=True)
    page.select_option("#order", "score")


def api_ids(url: str, body: dict) -> list[int]:
    answer = requests.post(f"{url}/search", json={**body, "top_k": 24}, timeout=30)
    assert answer.status_code == 200, answer.text
    return [r["id"] for r in answer.json()["results"]]


def test_more_and_less_like_a_result_refine_the_search(page, site) -> None:  # noqa: ANN001
    url, files = site
    page.goto(f"{url}/?q=holiday")
    expect(page.locator("#results li")).to_have_count(10)
    target = result_ids(page)[0]
    page.locator(f"#results button[data-id='{target}']").click()
    page.locator("#refine-unlike").click()
    page.wait_for_url(re.compile(rf"unlike={target}"))
    expect(page.locator(f"#query-info .chip.unlike[data-id='{target}']")).to_be_visible()
    expect(page.locator("#results li")).to_have_count(10)
    assert result_ids(page) == api_ids(url, {"text": "holiday", "negative": [{"image_id": target}]})
    page.screenshot(path=str(ARTIFACTS / "refined.png"), full_page=True)
    liked = result_ids(page)[3]
    page.locator(f"#results button[data-id='{liked}']").click()
    page.locator("#refine-like").click()
    page.wait_for_url(re.compile(rf"[?&]like={liked}"))
    expect(page.locator(f"#query-info .chip.like[data-id='{liked}']")).to_be_visible()
    expect(page.locator("#results li")).to_have_count(10)
    both = {"text": "holiday", "positive": [{"image_id": liked}], "negative": [{"image_id": target}]}
    page.wait_for_function(f"document.querySelector('#results li button').dataset.id == '{api_ids(url, both)[0]}'")
    assert result_ids(page) == api_ids(url, both)
    # A chip's × takes its part out again.
    page.locator(f"#query-info .chip.unlike[data-id='{target}'] button").click()
    page.wait_for_url(re.compile(r"^(?!.*unlike=)"))
    expect(page.locator("#query-info .chip")).to_have_count(1)
    page.reload()  # the refined query is in the URL, so it survives a reload and can be shared
    expect(page.locator("#query-info .chip.like")).to_have_count(1)


def test_duplicates_view_keeps_one_of_a_group(page, site, tmp_path) -> None:  # noqa: ANN001
    url, _ = site
    pixels = photo(300, 200, seed=8080)
    twins = [encode(pixels, "PNG"), encode(pixels, "BMP")]
    others = [encode(photo(300, 200, seed=s), "PNG") for s in (1, 2)]
    ids = [
        requests.post(f"{url}/images", json={"image": image_object(d), "collection": "twins"}, timeout=60).json()["id"]
        for d in twins + others
    ]
    vectors = requests.post(
        f"{url}/perception_encoder/embed_image", json={"image": [image_object(d) for d in twins + others]}, timeout=60
    ).json()["embeddings"]
    import numpy as np

    v = np.asarray(vectors)
    distinct = max(float(v[i] @ v[j]) for i in range(4) for j in range(i + 1, 4) if (i, j) != (0, 1))
    threshold = (float(v[0] @ v[1]) + distinct) / 2
    assert v[0] @ v[1] > distinct
    page.goto(f"{url}/?collection=twins")
    page.locator("#duplicates-link").click()
    page.wait_for_url(re.compile(r"view=duplicates"))
    typed = f"{threshold:.6f}".rstrip("0")
    page.fill("#dup-threshold", typed)
    with page.expect_request(lambda r: f"threshold={typed}&" in r.url):
        page.locator("#dup-form button").click()
    expect(page.locator(".dup-group")).to_have_count(1)
    expect(page.locator(".dup-group .dup-item")).to_have_count(2)
    heavier = ids[0] if len(twins[0]) > len(twins[1]) else ids[1]
    expect(page.locator(".dup-item.suggested")).to_have_attribute("data-id", str(heavier))
    page.wait_for_function(
        "[...document.querySelectorAll('.dup-item img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=str(ARTIFACTS / "duplicates.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f".dup-item[data-id='{heavier}'] .keep").click()
    expect(page.locator("#dup-status")).to_contain_text("1 deleted")
    expect(page.locator(".dup-group")).to_have_count(0)
    lighter = ids[1] if heavier == ids[0] else ids[0]
    assert requests.get(f"{url}/images/{lighter}", timeout=30).status_code == 404
    assert requests.get(f"{url}/images/{heavier}", timeout=30).status_code == 200
