"""`GET /` in a real headless browser: a person picks a photo and sees its labels; nothing on the
page reaches another host.

Debian's `chromium` and `chromium-driver` (`make browser` installs them; root) drive the page
through Selenium, with every host but 127.0.0.1 unresolvable and the browser's network log read
back, so a request to another host would fail the test twice over."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.bento_server import BentoServer, running_server
from tests.service.image_samples import cifar_samples

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 120.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    """The packaged repository as `bentoml serve .` serves it: both models, the default first."""
    with running_server(tmp_path_factory.mktemp("page-server"), {}) as running:
        yield running


@pytest.fixture(scope="module")
def browser(server: BentoServer) -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromium-driver are not installed (make browser)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=900,900",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # An explicit driver: Selenium Manager (which would look one up online) never runs.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_is_ours_and_self_contained(server: BentoServer) -> None:
    response = httpx.get(server.url + "/", timeout=30.0)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "googletagmanager" not in response.text
    assert re.findall(r"""(?:src|href|action)\s*=\s*["']?(?:https?:)?//""", response.text) == []


def test_a_person_classifies_a_photo_and_sees_errors(
    browser: object, server: BentoServer, cifar_zip: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server.url + "/")
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) >= 2)
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.text == "elufast-cifar10"

    _, jpeg = cifar_samples(cifar_zip)[0]
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg)
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.label")) == 5)
    labels = [
        row.find_elements(By.TAG_NAME, "td")[0].text
        for row in browser.find_elements(By.CSS_SELECTOR, "tr.label")
    ]
    expected = httpx.post(server.url + "/classify", files={"image": ("p.jpg", jpeg)}, timeout=30.0).json()
    assert labels == [entry["label"] for entry in expected["top_k"]]
    meta = browser.find_element(By.ID, "meta").text
    assert meta.startswith(expected["model"] + " · ") and " ms · photo.jpg" in meta
    browser.save_screenshot(str(tmp_path / "page.png"))

    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    browser.find_element(By.ID, "file").send_keys(str(text))
    error = wait.until(ec.visibility_of_element_located((By.ID, "error")))
    assert re.match(r"^(invalid_image|unsupported_format): \S", error.text), error.text
    assert browser.find_elements(By.CSS_SELECTOR, "tr.label") == []

    Select(browser.find_element(By.ID, "model")).select_by_visible_text("elu-paper18-cifar10")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait.until(lambda d: d.find_element(By.ID, "meta").text.startswith("elu-paper18-cifar10:"))

    requested = [
        json.loads(entry["message"])["message"]["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if '"Network.requestWillBeSent"' in entry["message"]
    ]
    assert requested and all(url.startswith((server.url, "blob:", "data:")) for url in requested), requested
