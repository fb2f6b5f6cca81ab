"""The status page (docs/rest-api.md) in a real headless Chromium against a real server: models
render, a new version directory on disk shows up without a reload, nothing is fetched from
anywhere but this server; a screenshot is saved (issue 16).

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); without them the test
fails, saying how to install them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from pyserving.demo import write_demo_repository
from tests.e2e.server import ServerProcess

INSTALL = "apt-get install -y chromium chromium-driver"
_WAIT_S = 30.0


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(
            "the status page test needs headless Chromium and its driver: install them with"
            f" `{INSTALL}` (Debian/Ubuntu; .ci/run does this)",
            pytrace=False,
        )
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1200,700",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served(tmp_path):
    repo = write_demo_repository(tmp_path / "repo")
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - name: mlp\n    base_path: {repo / 'mlp'}\n"
        "    version_policy: all\n    labels: {stable: 1}\n"
        f"  - name: twoio\n    base_path: {repo / 'twoio'}\n"
    )
    server = ServerProcess(f"--model_config_file={config}", "--file_system_poll_wait_seconds=0.2")
    try:
        server.wait_ready()
        yield server, repo
    finally:
        assert server.stop() == 0, server.log()


def _chip(driver, model: str, version: str, state: str):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(
        By.CSS_SELECTOR,
        f'tr[data-model="{model}"] [data-version="{version}"][data-state="{state}"]',
    )
    return found[0] if found else None


@pytest.mark.slow
def test_status_page_renders_updates_live_and_stays_on_this_server_issue_16(
    browser, served, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, repo = served
    wait = WebDriverWait(browser, _WAIT_S)
    browser.get(server.url + "/")
    wait.until(lambda d: _chip(d, "mlp", "2", "AVAILABLE") and _chip(d, "twoio", "1", "AVAILABLE"))
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-model="mlp"]')
    assert "stable → 1" in row.text

    # Traffic: the page's counters move without a reload.
    browser.execute_script("window.__sameDocument = true;")
    good = {"instances": [[0.0] * 64]}
    for _ in range(3):
        assert httpx.post(f"{server.url}/v1/models/mlp:predict", json=good).status_code == 200
    assert httpx.post(f"{server.url}/v1/models/mlp:predict", json={}).status_code == 400

    def counted(d) -> bool:
        cells = d.find_element(By.CSS_SELECTOR, 'tr[data-model="mlp"]').find_elements(
            By.TAG_NAME, "td"
        )
        return cells[5].text == "4" and cells[6].text == "1"  # requests, errors

    wait.until(counted)

    # A new version directory on disk: the page shows it loading, then AVAILABLE.
    staging = repo / "mlp" / "staging"
    shutil.copytree(repo / "mlp" / "2", staging)
    staging.rename(repo / "mlp" / "3")
    wait.until(lambda d: _chip(d, "mlp", "3", "AVAILABLE"))
    assert browser.execute_script("return window.__sameDocument === true;"), "the page reloaded"

    # Everything it fetched came from this server; the browser logged no error (e.g. CSP).
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);"
    )
    assert fetched and all(url.startswith(server.url + "/") for url in fetched), fetched
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []

    shot = Path(tmp_path) / "status-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
    print(f"status page screenshot: {shot}")


def test_status_json_counts_requests_errors_and_batches_issue_16(tmp_path):
    """What the page polls, without a browser: versions, labels, requests by code, batches."""
    repo = write_demo_repository(tmp_path / "repo")
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - name: mlp\n    base_path: {repo / 'mlp'}\n"
        "    version_policy: {latest: 2}\n    labels: {stable: 1, canary: 2}\n"
        "    batching: {max_batch_size: 8, batch_timeout_micros: 1000}\n"
    )
    server = ServerProcess(f"--model_config_file={config}")
    try:
        server.wait_ready()
        url = f"{server.url}/v1/models/mlp:predict"
        assert httpx.post(url, json={"instances": [[0.0] * 64] * 3}).status_code == 200
        assert httpx.post(url, json={"instances": [[0.0] * 3]}).status_code == 400
        assert httpx.get(f"{server.url}/v1/models/nope").status_code == 404
        response = httpx.get(f"{server.url}/status.json")
    finally:
        assert server.stop() == 0, server.log()
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["server"]["name"] == "pyserving"
    (mlp,) = data["models"]  # the unknown name is not listed
    assert mlp["name"] == "mlp" and mlp["labels"] == {"canary": "2", "stable": "1"}
    assert [(v["version"], v["state"]) for v in mlp["versions"]] == [
        ("2", "AVAILABLE"),
        ("1", "AVAILABLE"),
    ]
    assert mlp["requests"]["total"] == 2 and mlp["requests"]["errors"] == 1
    assert mlp["requests"]["by_code"] == {"200": 1, "400": 1}
    assert mlp["batches"]["count"] >= 1 and mlp["batches"]["rows"] >= 3
