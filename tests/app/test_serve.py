"""`specdeck serve`: the dashboard as a web page, driven in a real headless Chromium.

The browser test starts `specdeck --simulate cuda:2 serve` as a process and Debian's
chromium through its chromedriver (selenium), once for the module. The page draws the
terminal on a canvas, so the test reads the screen from the page's own xterm.js buffer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from app.cli import main
from app.commands.serve import dashboard_command, is_loopback

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 60.0  # the longest a test waits for a state (a dashboard starting on a loaded 2-core box)
CHROMIUM_FLAGS = (
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
# before the page's scripts run: keep each xterm.js Terminal the page makes (textual-serve
# assigns it to a `terminal` property), so the test can read what the page shows
KEEP_TERMINALS = """
Object.defineProperty(Object.prototype, 'terminal', {
  configurable: true,
  set(value) {
    Object.defineProperty(this, 'terminal', {value, writable: true, configurable: true,
                                             enumerable: true});
    if (value && value.buffer) { (window.__terminals = window.__terminals || []).push(value); }
  },
});
"""
SCREEN_TEXT = """
const t = (window.__terminals || [])[0];
if (!t) return '';
const b = t.buffer.active, rows = [];
for (let y = 0; y < t.rows; y++) {
  const line = b.getLine(b.viewportY + y);
  rows.push(line ? line.translateToString(true) : '');
}
return rows.join('\\n');
"""

needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, process: subprocess.Popen | None = None):
    """Poll `check` until it returns something true; fail after WAIT_S saying what was awaited."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            out = process.log_path.read_text()
            pytest.fail(f"specdeck serve ended (status {process.returncode}) before {what}: {out}")
        if result := check():
            return result
        time.sleep(0.1)
    pytest.fail(f"no {what} after {WAIT_S:.0f} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `specdeck --simulate cuda:2 serve` on a free port, with its own data folder."""
    home = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {
        **os.environ,
        "SPECDECK_DATA_DIR": str(home / "data"),
        "SPECDECK_CONFIG": str(home / "config.toml"),
    }
    argv = [sys.executable, "-m", "app.cli", "--simulate", "cuda:2", "serve", "--port", str(port)]
    log = (home / "serve.log").open("w")  # a file: a pipe nobody reads could stall the server
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = home / "serve.log"

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, f"server listening on port {port}", process)
    yield process, f"http://127.0.0.1:{port}/"
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=WAIT_S)
    log.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module, through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="specdeck-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": KEEP_TERMINALS})
        try:
            yield driver
        finally:
            driver.quit()


def screen_text(driver) -> str:
    return driver.execute_script(SCREEN_TEXT) or ""


@pytest.fixture(scope="module")
def page(server, browser):
    """The served page open in the browser, its dashboard drawn (the device grid's title)."""
    process, url = server
    browser.get(url)
    wait_until(lambda: "Devices" in screen_text(browser), "dashboard in the page", process)
    return browser


@needs_browser
def test_the_page_shows_the_device_cards(page):
    def cards() -> bool:
        text = screen_text(page)
        return all(device in text for device in ("cpu", "sim-cuda:0", "sim-cuda:1"))

    wait_until(cards, "card for cpu, sim-cuda:0 and sim-cuda:1")
    assert "SIM" in screen_text(page)  # the simulated cards say so in the browser too


@needs_browser
def test_a_key_pressed_in_the_page_reaches_the_dashboard(page):
    from selenium.webdriver.common.by import By

    assert "no runs recorded yet" not in screen_text(page)
    page.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea").send_keys("r")
    wait_until(lambda: "no runs recorded yet" in screen_text(page), "runs view after r")


@needs_browser
def test_stopping_the_server_quits_every_browser_s_dashboard(server, page):
    process, _ = server
    dashboards = wait_until(
        lambda: [p for p in psutil.Process(process.pid).children(recursive=True)],
        "dashboard process under the server",
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=WAIT_S) == 0
    _, alive = psutil.wait_procs(dashboards, timeout=WAIT_S)
    assert not alive


def test_a_busy_port_is_one_line_and_status_2(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "in use" in err


def test_each_browser_gets_the_dashboard_with_the_global_options():
    from app.cli import build_parser

    args = build_parser().parse_args(
        ["--simulate", "cuda:2", "serve", "--theme", "specdeck-light", "--models-dir", "/m 1"]
    )
    args.models_dir = [*args.models_dir, *args.models_dir_after]
    command = dashboard_command(args)
    assert command.startswith(f"{sys.executable} -m app.cli ")
    assert "--simulate cuda:2" in command and "--theme specdeck-light" in command
    assert "--models-dir '/m 1'" in command  # quoted for the shell that starts it


def test_only_loopback_addresses_count_as_private():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
