"""The labeling guide's picture of the labelers' page (run by hand):

    .venv/bin/python tests/support/labeling_screenshot.py docs/guides/labeling-page.png

A labeling server on a temporary SQLite file, one task, a labeler half way through it, in headless
Chromium (the OS packages chromium and chromium-driver)."""

import shutil
import sys
import tempfile
from pathlib import Path

from labeling_server import Server, free_port
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen
from selenium.webdriver.support.ui import Select, WebDriverWait

from instructray.orchestrator.labeling.store import Store

TASK = {
    "prompt": "Explain to a six-year-old why the sky is blue.",
    "responses": [
        "Sunlight is made of all the colours. The air bounces the blue part around the most, so "
        "blue comes at your eyes from every part of the sky.",
        "Because of Rayleigh scattering, whose cross-section goes as the inverse fourth power of "
        "the wavelength.",
        "The sky is blue because it reflects the ocean.",
        "Light from the sun has many colours mixed together. Tiny bits of air scatter blue light "
        "more than red, so when you look up, you see blue everywhere.",
    ],
}


def main(out: str) -> None:
    home = Path(tempfile.mkdtemp(prefix="labeling-shot-"))
    db = f"sqlite:///{home / 'labels.db'}"
    store = Store(db)
    token = store.add_labeler("alice")
    store.publish([TASK])
    store.close()
    server = Server(db, free_port(), home / "serve.log")
    server.start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--window-size=1000,1250"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        chrome.get(server.url + "/")
        chrome.find_element(By.ID, "token").send_keys(token)
        chrome.find_element(By.ID, "start").click()
        WebDriverWait(chrome, 30).until(seen.visibility_of_element_located((By.ID, "task")))
        verdicts = {0: ("6", "1"), 3: ("6", "1"), 1: ("3", "3"), 2: ("1", "4")}  # 0 and 3 tie
        for card in chrome.find_elements(By.CLASS_NAME, "answer"):
            text = card.find_element(By.CLASS_NAME, "answer-text").text
            rating, rank = verdicts[TASK["responses"].index(text)]
            Select(card.find_element(By.CLASS_NAME, "rating")).select_by_value(rating)
            Select(card.find_element(By.CLASS_NAME, "rank")).select_by_value(rank)
            if text.startswith("The sky is blue because it reflects"):
                card.find_element(By.CSS_SELECTOR, ".flag[value='hallucination']").click()
        chrome.save_screenshot(out)
        print(f"wrote {out}")
    finally:
        chrome.quit()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
