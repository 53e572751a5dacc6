"""docs/webui.png: the chat page of `tritpack-gguf serve` answering on a TritPack model.

    .venv/bin/python docs/webui_screenshot.py MODEL-TP4.gguf [docs/webui.png] [--prompt TEXT]

Serves MODEL with the patched llama-server (loopback, a free port), opens its page in Debian's headless
chromium (`make browser` installs it), sends the prompt, waits for the streamed answer to finish and
saves a screenshot.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tritpack_gguf.serve import start_server

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,800", "--hide-scrollbars"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path, nargs="?", default=Path("docs/webui.png"))
    ap.add_argument("--prompt", default="What is the capital of France? Tell me one fact about it.")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            start_server(a.model, port=0, threads=a.threads, log_file=Path(tmp) / "server.log") as s:
        s.wait_ready(timeout=300)
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for flag in FLAGS + [f"--user-data-dir={tmp}/profile"]:
            opts.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            wait = WebDriverWait(driver, 300, poll_frequency=0.2)
            driver.get(s.url + "/")
            box = wait.until(lambda d: next((e for e in d.find_elements(By.TAG_NAME, "textarea") if e.is_displayed()), None))
            box.send_keys(a.prompt + Keys.ENTER)
            stop = '//button[.//span[normalize-space()="Stop"]]'
            wait.until(lambda d: d.find_elements(By.XPATH, '//*[@aria-label="Assistant message with actions"]'))
            wait.until(lambda d: not d.find_elements(By.XPATH, stop))
            time.sleep(1.0)   # the statistics line under the answer
            a.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(a.out))
        finally:
            driver.quit()
    print(a.out)


if __name__ == "__main__":
    main()
