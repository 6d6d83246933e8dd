"""What an annotator sees, in a real browser (Debian's chromium, headless, through selenium) on the
real Label Studio the suite starts: the labeling page of a task handed out by `connect` shows the
painted view and every reference view loaded, the patch's description, the labels (unsure and
cloud among them), the "no glacier" choice, and the pre-label drawn as regions. Screenshots of
the page and of each view are saved under the test's temp dir; assertions are on the DOM."""

from __future__ import annotations

import os
import shutil

import pytest

from backends import studio
from backends.label_config import ALL_LABELS, IMAGE_DATA_KEY, NO_GLACIER, VIEW_DATA_KEYS
from tests.test_label_studio_e2e import ServedBackend, live, wait_for  # noqa: F401 (live is a fixture)

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


@pytest.fixture
def browser():
    found = shutil.which("chromium") and shutil.which("chromedriver")
    if not found:
        if _ci():
            pytest.fail("CI requires chromium and chromedriver (.ci/install-chromium.sh)", pytrace=False)
        pytest.skip("no chromium/chromedriver: run .ci/install-chromium.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                              options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def _log_in(driver, server) -> None:
    driver.get(server.url + "/user/login/")
    driver.find_element(By.NAME, "email").send_keys(server.username)
    driver.find_element(By.NAME, "password").send_keys(server.password)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit], form input[type=submit]").click()
    wait_for(lambda: "/user/login" not in driver.current_url, 60, "the login to go through")


def _loaded_images(driver) -> dict[str, int]:
    """src -> natural width of every <img> on the page that has finished loading."""
    return driver.execute_script(
        "return Object.fromEntries([...document.images].filter(i => i.complete && i.naturalWidth > 0)"
        ".map(i => [i.src, i.naturalWidth]));") or {}


def test_the_labeling_page_shows_every_view_the_labels_and_the_pre_label(live, browser, tmp_path):
    ws, store, ls, server = live
    served = ServedBackend(ws, store)
    try:
        report = studio.connect(ws, store)
        task = min(ls.tasks.list(project=report.project_id, fields="all"), key=lambda t: t.data["rank"])
        predicted = ls.predictions.list(task=task.id)[0]
        painted_labels = {r["value"]["brushlabels"][0] for r in predicted.result if r["type"] == "brushlabels"}
        assert painted_labels, "the pre-label paints something on this patch"

        _log_in(browser, server)
        browser.get(f"{server.url}/projects/{report.project_id}/data?task={task.id}")
        files = {key: task.data[key].split("d=")[-1].split("%2F")[-1].split("/")[-1]
                 for key in (IMAGE_DATA_KEY, *VIEW_DATA_KEYS)}

        def body() -> str:
            return browser.find_element(By.TAG_NAME, "body").text

        def all_views_loaded():  # the Data Manager's table shows them too: wait for the editor first
            loaded = _loaded_images(browser)
            return ("(paint here)" in body() and all(any(name in src for src in loaded) for name in files.values())
                    and loaded)

        try:
            loaded = wait_for(all_views_loaded, 180, "the labeling editor with every view of the task loaded")
            page = wait_for(lambda: any(name in body() for name in painted_labels) and body(), 60,
                            "the pre-label's regions")
        finally:
            browser.save_screenshot(str(tmp_path / "labeling-page.png"))
        # The patch's description, the view titles, every label and the verdict are on the page.
        assert task.data["about"].split(" · ")[0] in page and "round 1, rank 1 of 4" in page
        assert "(paint here)" in page and "Natural colour B3/B2/B1" in page and "Terrain: hillshade" in page
        for label in ALL_LABELS:
            assert label in page, label
        assert NO_GLACIER in page
        # The pre-label is drawn: its regions are listed with their labels (waited for above).
        assert any(name in page for name in painted_labels)
        # The painted view is a canvas stage with a drawn layer (Konva), the others plain images.
        assert browser.find_elements(By.CSS_SELECTOR, "canvas")
        # One screenshot per view, as the annotator sees it.
        for key, name in files.items():
            # the editor's image is the largest on the page (the table shows thumbnails)
            element = max(browser.find_elements(By.CSS_SELECTOR, f"img[src*='{name}']"),
                          key=lambda e: e.size["width"])
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
            path = tmp_path / f"view-{key}.png"
            try:
                element.screenshot(str(path))
            except WebDriverException:  # a hidden <img> (the painted view draws on a canvas): the page instead
                browser.save_screenshot(str(path))
            assert path.stat().st_size > 0
        assert all(width > 0 for width in loaded.values())
    finally:
        served.stop()
