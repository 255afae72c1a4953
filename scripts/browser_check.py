"""Open a task in Label Studio's labeling editor in headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium), read the regions the editor lists, and save a screenshot.

    python scripts/browser_check.py --url http://127.0.0.1:8080 --project 1 --task 7 --out shot.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The closed network refuses Chromium's background connections: switch them off.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)
REGION = ".lsf-tree__node_type_rectangleregion"


def labeling_page_regions(
    url: str, user: str, password: str, project_id: int, task_id: int, screenshot: Path, timeout: float = 90
) -> list[tuple[str, float | None]]:
    """(label, score) of each predicted region the editor lists for the task, in its order
    (the list is virtualised: only the regions in view are read)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{url}/user/login/")
        driver.find_element(By.NAME, "email").send_keys(user)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        WebDriverWait(driver, timeout).until(lambda d: "/user/login" not in d.current_url)
        driver.get(f"{url}/projects/{project_id}/data?task={task_id}")
        # Predicted regions show their score once the editor has fully loaded the prediction.
        WebDriverWait(driver, timeout).until(
            lambda d: any(e.text.count("\n") >= 2 for e in d.find_elements(By.CSS_SELECTOR, REGION)),
            f"task {task_id}: no predicted region appeared in the editor within {timeout:g} s",
        )
        regions = []
        for element in driver.find_elements(By.CSS_SELECTOR, REGION):
            lines = element.text.split("\n")  # "<index>", "<label>"[, "<score>"]
            if len(lines) >= 2:
                regions.append((lines[1], float(lines[2]) if len(lines) > 2 else None))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return regions
    finally:
        driver.quit()


def main() -> None:

    from scripts import label_studio

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", default=label_studio.USERNAME)
    parser.add_argument("--password", default=label_studio.PASSWORD)
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    regions = labeling_page_regions(args.url, args.user, args.password, args.project, args.task, args.out)
    print(f"{len(regions)} regions in view: {regions}; screenshot {args.out}")


if __name__ == "__main__":
    main()
