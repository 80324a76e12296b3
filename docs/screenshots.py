"""The README's MLflow screenshots, taken in headless Chromium from a running MLflow UI.

    .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000 &   # after make demo
    python docs/screenshots.py http://127.0.0.1:5000 --out docs/images

Needs Playwright's Python package (`pip install playwright`, no browser download) and a
Chromium (`/usr/bin/chromium`, Debian's package `chromium`). Not part of the product."""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ML = "workflowType=machine_learning"


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def close_assistant(page) -> None:
    """MLflow's assistant side panel takes a third of the page: close it when it is there."""
    button = page.get_by_role("button", name="Close")
    if button.count():
        button.first.click()
        page.wait_for_timeout(500)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", help="the MLflow UI, e.g. http://127.0.0.1:5000")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--model", default="shapes-distilled", help="a registered model name")
    args = parser.parse_args()
    base = args.base.rstrip("/")
    experiment = api(base, "experiments/get-by-name?experiment_name=comparisons")["experiment"]
    eid = experiment["experiment_id"]
    runs = api(base, "runs/search", {"experiment_ids": [eid]})["runs"]
    distilled = next(r for r in runs if r["info"]["run_name"] == "distilled")
    version = api(base, f"registered-models/get-latest-versions?name={args.model}")
    number = version["model_versions"][-1]["version"]
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})

        # the comparison: one parent run, its teacher / baseline / distilled children
        page.goto(f"{base}/#/experiments/{eid}/runs?{ML}")
        page.wait_for_timeout(5000)
        close_assistant(page)
        page.locator('[data-component-id*="runnamecellrenderer"]').first.click()  # expand
        page.wait_for_timeout(1500)
        page.screenshot(path=str(args.out / "compare_runs.png"))

        # the children's validation AP over epochs, side by side
        page.locator("input[value=CHART]").evaluate("e => e.click()")
        page.wait_for_timeout(5000)
        expand = page.locator('[data-component-id*="runnamecellrenderer"]')
        if page.get_by_role("link", name="distilled").count() == 0 and expand.count():
            expand.first.click()
            page.wait_for_timeout(1500)
        page.get_by_placeholder("Search metric charts").fill("val/AP")
        page.wait_for_timeout(3000)
        page.screenshot(path=str(args.out / "val_charts.png"))

        # a registered version: description, tags (AP, method, teacher, params, latency), alias
        page.goto(f"{base}/#/models/{args.model}/versions/{number}?{ML}")
        page.wait_for_timeout(4000)
        close_assistant(page)
        page.screenshot(path=str(args.out / "model_version.png"))
        browser.close()
    print(f"distilled run {distilled['info']['run_id']}: its predictions mosaic is an artifact")


if __name__ == "__main__":
    main()
