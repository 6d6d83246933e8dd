"""What an annotator sees, in a real browser (Debian's chromium, headless, through selenium) on the
real Label Studio the suite starts: the labeling page of a task handed out by `connect` shows the
painted view and every reference view loaded, the patch's description, the labels (unsure and
cloud among them), the "no glacier" choice, and the pre-label drawn as regions. Screenshots of
the page and of each view are saved under the test's temp dir; assertions are on the DOM."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from sqlalchemy import select

from al_loop.classes import BACKGROUND, CLEAN_ICE
from backends import studio
from backends.label_config import ALL_LABELS, IMAGE_DATA_KEY, NO_GLACIER, VIEW_DATA_KEYS
from backends.results import results_to_mask
from db.models import Label
from db.queries import unpack_mask
from tests.test_label_studio_e2e import ServedBackend, live, wait_for  # noqa: F401 (live is a fixture)

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


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


def _body(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def _open_task(driver, server, project_id: int, task) -> dict[str, int]:
    """Open a task's labeling page and wait until the editor shows every view; their loaded
    <img> sources -> natural widths."""
    driver.get(f"{server.url}/projects/{project_id}/data?task={task.id}")
    names = [_file_name(task.data[key]) for key in (IMAGE_DATA_KEY, *VIEW_DATA_KEYS)]

    def all_views_loaded():  # the Data Manager's table shows them too: wait for the editor first
        loaded = _loaded_images(driver)
        return "(paint here)" in _body(driver) and all(any(n in src for src in loaded) for n in names) and loaded

    return wait_for(all_views_loaded, 180, "the labeling editor with every view of the task loaded")


def _file_name(url: str) -> str:
    return url.split("d=")[-1].split("%2F")[-1].split("/")[-1]


def _submit(driver) -> None:
    button = wait_for(lambda: [b for b in driver.find_elements(By.TAG_NAME, "button")
                               if b.text.strip() in ("Submit", "Update") and b.is_enabled()], 30, "the Submit button")
    button[0].click()


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
        try:
            loaded = _open_task(browser, server, report.project_id, task)
            page = wait_for(lambda: any(name in _body(browser) for name in painted_labels) and _body(browser), 60,
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
        for key in (IMAGE_DATA_KEY, *VIEW_DATA_KEYS):
            # the editor's image is the largest on the page (the table shows thumbnails)
            element = max(browser.find_elements(By.CSS_SELECTOR, f"img[src*='{_file_name(task.data[key])}']"),
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


def _stored_label(store, patch_id: int):
    with store.session() as session:
        label = session.scalar(select(Label).where(Label.patch_id == patch_id, Label.source == "annotation",
                                                   Label.status == "accepted"))
        return None if label is None else unpack_mask(label.mask, label.patch.height, label.patch.width)


def test_an_expert_paints_with_the_mouse_says_no_glacier_or_submits_nothing(live, browser, tmp_path):
    """Three tasks as an expert works them: a brush stroke over the pre-label (stored as drawn),
    "No glacier in this patch" ticked over the pre-label (stored all background), and the
    pre-label erased and submitted with nothing painted (no label)."""
    ws, store, ls, server = live
    served = ServedBackend(ws, store, worker=False)
    try:
        report = studio.connect(ws, store)
        tasks = sorted(ls.tasks.list(project=report.project_id, fields="all"), key=lambda t: t.data["rank"])
        _log_in(browser, server)

        # 1. A stroke of clean ice over the pre-label, saved with Submit.
        stroked = tasks[1]
        predicted = ls.predictions.list(task=stroked.id)[0]
        before = results_to_mask(predicted.result, 128, 128) if predicted.result else np.zeros((128, 128), np.uint8)
        _open_task(browser, server, report.project_id, stroked)
        ActionChains(browser).send_keys("1").perform()  # the hotkey of "Clean ice"
        stage = max(browser.find_elements(By.CSS_SELECTOR, "canvas"), key=lambda c: c.size["width"] * c.size["height"])
        ActionChains(browser).move_to_element_with_offset(stage, -60, 0).click_and_hold().move_by_offset(40, 0) \
            .move_by_offset(40, 0).move_by_offset(40, 0).release().perform()
        browser.save_screenshot(str(tmp_path / "stroke.png"))
        _submit(browser)
        wait_for(lambda: _stored_label(store, stroked.data["patch_id"]) is not None, 60, "the "
                                                                                         "stroked label in the store")
        after = _stored_label(store, stroked.data["patch_id"])
        changed = after != before
        assert changed.sum() > 20, "the stroke reached the store"
        assert (after[changed] == CLEAN_ICE).all()

        # 2. "No glacier in this patch", ticked over a pre-label the expert does not erase.
        empty_task = tasks[2]
        _open_task(browser, server, report.project_id, empty_task)
        checkbox = f"//label[contains(., '{NO_GLACIER}')]//input"
        choice = wait_for(lambda: browser.find_elements(By.XPATH, checkbox), 30, "the verdict's checkbox")[0]
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", choice)
        wait_for(lambda: browser.find_element(By.XPATH, checkbox).is_selected(), 10, "the verdict to be ticked")
        browser.save_screenshot(str(tmp_path / "no-glacier.png"))
        _submit(browser)
        wait_for(lambda: _stored_label(store, empty_task.data["patch_id"]) is not None, 60, "the no-glacier label")
        verdict = _stored_label(store, empty_task.data["patch_id"])
        assert (verdict == BACKGROUND).all()
        with store.session() as session:
            assert session.scalar(select(Label.details).where(Label.patch_id == empty_task.data["patch_id"]))[
                "no_glacier"] is True

        # 3. The pre-label erased (Ctrl+Backspace: delete all regions), nothing chosen: Label Studio
        # keeps the annotation, al-loop no label.
        nothing = tasks[3]
        _open_task(browser, server, report.project_id, nothing)
        wait_for(lambda: "Clean ice" in _body(browser).split("Regions")[-1], 60, "the pre-label's regions")
        ActionChains(browser).key_down(Keys.CONTROL).send_keys(Keys.BACKSPACE).key_up(Keys.CONTROL).perform()
        browser.switch_to.alert.accept()  # "Please confirm you want to delete all labeled regions"
        wait_for(lambda: "Clean ice" not in _body(browser).split("Regions")[-1], 30, "the regions to be gone")
        browser.save_screenshot(str(tmp_path / "erased.png"))
        _submit(browser)
        wait_for(lambda: served.backend.writer.outcomes["empty"] >= 1, 60, "the empty submission to be read")
        assert _stored_label(store, nothing.data["patch_id"]) is None
    finally:
        browser.save_screenshot(str(tmp_path / "last.png"))
        served.stop()
