"""The search page in a real browser: Debian's headless Chromium driven by Playwright.

Types a query, sees the results grid with thumbnails, captions and similarities, switches modality,
uploads an image, and takes a screenshot. (docs/img/search-page.png is the same page over the tour's
index, with a briefly trained model, so its results mean something; this test's model is untrained.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _search_util import build_model_index, faiss_one_thread  # noqa: F401 - an autouse fixture

from clipstack.search.server import ServerConfig, ServerThread, build_engine, create_app

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian chromium is not installed (make sysdeps)")


def test_page_searches_and_shows_results(tmp_path):
    from playwright.sync_api import sync_playwright

    built = build_model_index(tmp_path, shards=2, per_shard=12)
    config = ServerConfig(indices={"colors": {"index_dir": str(built["idx"])}})
    requests_seen: list[str] = []
    with ServerThread(create_app(build_engine(config), config)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
            viewport={"width": 1180, "height": 760})
        try:
            page = browser.new_page()
            page.on("request", lambda req: requests_seen.append(req.url))
            page.goto(url + "/")
            page.wait_for_function("document.querySelector('#index').options.length > 0")
            assert "23 items" in page.inner_text("#index-meta")
            page.fill("#query", "a photo of a red square")
            page.press("#query", "Enter")
            page.wait_for_selector(".card.result")
            cards = page.locator(".card.result")
            assert cards.count() >= 5
            first = cards.first
            assert "square" in first.locator(".caption").inner_text()
            assert -1.0 <= float(first.locator(".sim").inner_text()) <= 1.0  # an untrained model
            # Thumbnails load lazily: the first row is in view and must have decoded.
            page.wait_for_function("(() => { const i = document.querySelector('.thumb img');"
                                   " return i && i.complete && i.naturalWidth > 0; })()")
            assert "results in" in page.inner_text("#status")
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000
            # Captions mode searches the text index.
            page.click("button[data-modality=text]")
            page.wait_for_function("document.querySelector('#status').textContent.includes('results in')")
            assert page.get_attribute("button[data-modality=text]", "aria-checked") == "true"
            # Upload an image through the file input (the drop zone's fallback).
            page.set_input_files("#file", _query_image(tmp_path))
            page.wait_for_function("!document.querySelector('#query-image').hidden")
            page.wait_for_function("document.querySelector('#status').textContent.includes('results in')")
        finally:
            browser.close()
    assert all(u.startswith(url) or u.startswith("data:") for u in requests_seen), "page fetched off-site"


def _query_image(tmp_path: Path) -> str:
    from _search_util import jpeg_bytes

    path = tmp_path / "query.jpg"
    path.write_bytes(jpeg_bytes("blue", seed=3))
    return str(path)
