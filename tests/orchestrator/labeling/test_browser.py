"""A labeler in a real browser (headless Chromium and chromedriver from the OS packages, driven by
Selenium): logs in with a token, rates, ties two answers, submits; the export holds the ranking
with its tie, and answers that hold HTML are shown as text, never run."""

import shutil

import pytest
from labeling_server import Server, free_port
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen
from selenium.webdriver.support.ui import Select, WebDriverWait

from instructray.orchestrator.labeling.store import Store

WAIT_S = 30
SCRIPT = "<script>window.pwned = 1</script>Tom is a fine name."
IMG = '<img src="x" onerror="window.pwned = 2">Felix.'
SANE = "Whiskers, a common name for a cat."


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if not browser or not shutil.which(driver):
        raise RuntimeError(
            "chromium and chromedriver are not installed: apt-get install "
            "chromium chromium-driver (.ci/run does)"
        )
    return browser, driver


@pytest.fixture
def browser():
    binary, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1000,1200",
    ):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_page_load_timeout(WAIT_S)
    yield chrome
    chrome.quit()


def test_a_labeler_rates_ties_and_submits_in_a_browser(tmp_path, browser):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Store(db)
    token = store.add_labeler("alice")
    store.publish([{"prompt": "Name a cat. <b>bold?</b>", "responses": [SCRIPT, IMG, SANE]}])
    server = Server(db, free_port(), tmp_path / "serve.log")
    server.start()
    try:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "start").click()
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(seen.visibility_of_element_located((By.ID, "task")))
        assert browser.find_element(By.ID, "prompt").text == "Name a cat. <b>bold?</b>"
        cards = {
            card.find_element(By.CLASS_NAME, "answer-text").text: card
            for card in browser.find_elements(By.CLASS_NAME, "answer")
        }
        # model output arrives as text: the markup is on the page, nothing of it ran or loaded
        assert set(cards) == {SCRIPT, IMG, SANE}
        assert browser.find_elements(By.TAG_NAME, "img") == []
        assert browser.execute_script("return window.pwned") is None
        for text, rank, rating in ((SANE, "1", "6"), (SCRIPT, "2", "2"), (IMG, "2", "3")):
            Select(cards[text].find_element(By.CLASS_NAME, "rank")).select_by_value(rank)
            Select(cards[text].find_element(By.CLASS_NAME, "rating")).select_by_value(rating)
        cards[IMG].find_element(By.CSS_SELECTOR, ".flag[value='harmful_advice']").click()
        browser.save_screenshot(str(tmp_path / "labeling-page.png"))
        browser.find_element(By.ID, "submit").click()
        wait.until(seen.text_to_be_present_in_element((By.ID, "status"), "No task is waiting"))
    finally:
        server.stop()
    [row] = store.export()
    store.close()
    assert row["responses"] == [SCRIPT, IMG, SANE]
    assert row["ranking"][0] == [2] and sorted(row["ranking"][1]) == [0, 1]  # the tie
    assert row["ratings"] == [2, 3, 6] and row["flags"] == [[], ["harmful_advice"], []]
    assert row["labeler"] == "alice"
