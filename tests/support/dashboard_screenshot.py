"""The Ray dashboard's Actors view during a tiny PPO run, as a PNG for the docs (run by hand;
headless Chromium from the OS packages, driven by Selenium):

    apt-get install chromium chromium-driver   # selenium is in the dev extra
    .venv/bin/python tests/support/dashboard_screenshot.py docs/guides/dashboard-actors.png

It starts `instructray ppo` on the tiny models (its own local Ray), waits for its third step,
opens the dashboard the run printed with the token Ray keeps (a cookie, as the dashboard's token
prompt sets it), waits for the actor list to show the run's named actors, saves the screenshot,
and stops the run with SIGTERM (it checkpoints and exits)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[2]
WAIT_S = 600


def wait_for(what: str, check, deadline: float):
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {WAIT_S} s")
        time.sleep(0.5)
    return value


def main(out: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    run = Path(tempfile.mkdtemp(prefix="dash-")) / "ppo"
    console = run.parent / "console.txt"
    cmd = [
        str(ROOT / ".venv/bin/instructray"),
        "ppo",
        "--config=deploy/configs/ppo-tiny-cpu.yaml",
        f"--run.output_dir={run}",
        "--run.steps=1000",
        "--rollout.num_engines=2",
    ]
    with console.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + WAIT_S
    try:
        url = wait_for(
            "dashboard address",
            lambda: (m := re.search(r"dashboard: (http://\S+)", console.read_text())) and m[1],
            deadline,
        )
        metrics = run / "metrics.jsonl"
        wait_for(
            "third step",
            lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3,
            deadline,
        )
        token = subprocess.run(
            [str(ROOT / ".venv/bin/ray"), "get-auth-token"], capture_output=True, text=True
        ).stdout.strip()
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")  # the OS's, not one fetched
        for flag in ("--headless=new", "--no-sandbox", "--window-size=1500,1300"):
            options.add_argument(flag)
        driver = Service(shutil.which("chromedriver"))
        browser = webdriver.Chrome(service=driver, options=options)
        try:
            browser.get(url)
            if token:
                browser.add_cookie({"name": "ray-authentication-token", "value": token})
            browser.get(f"{url}/#/actors")
            if token:  # the dashboard may still ask: type the token into its prompt
                time.sleep(3)  # its first API calls decide whether the prompt shows
                for field in browser.find_elements(By.CSS_SELECTOR, "input[type=password]"):
                    field.send_keys(token)
                    for button in browser.find_elements(By.TAG_NAME, "button"):
                        if button.text.strip().lower() == "submit":
                            button.click()
            try:
                wait_for(
                    "actor named learner-rank-1",
                    lambda: "learner-rank-1" in browser.find_element(By.TAG_NAME, "body").text,
                    min(deadline, time.monotonic() + 120),
                )
            finally:  # what the page shows, found or not
                browser.save_screenshot(out)
        finally:
            browser.quit()
        print(f"wrote {out}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)


if __name__ == "__main__":
    main(sys.argv[1])
