"""Real-browser fixtures: ``jupyter lab`` on loopback and Debian's chromium driven by Playwright.

No browser is downloaded: chromium comes from apt and ``playwright`` from PyPI, both installed
by ``.ci/browser-setup.sh``. Without them the tests skip, except under CI (``CI`` set and not
``0``/``false``), where a missing browser is a failure.

Fixtures:
    lab: the server (session-wide); notebooks go in ``lab.root``.
    browser: chromium (session-wide).
    page: a fresh context and page per test that can reach only 127.0.0.1; ``page.lab`` is
        the server, ``page.blocked_requests`` the aborted non-loopback URLs,
        ``page.console_errors`` console errors and uncaught page errors.

Helpers (``write_notebook``, ``run_notebook_in_lab``, ``panel_output``, ``screenshot``,
``titles``) live in ``browser_helpers.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

import pytest
from browser_helpers import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    RECORD_TITLES,
    REPO,
    SCREENSHOTS,
    SERVER_START_TIMEOUT,
    WIDGET_TIMEOUT,
    Lab,
    screenshot,
    stop_process_tree,
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing() -> list[str]:
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"chromium ({CHROMIUM})")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package")
    return missing


@pytest.fixture(scope="session")
def browser_requirements() -> None:
    """Skip (locally) or fail (under CI) when chromium or playwright is missing."""
    missing = _missing()
    if missing:
        reason = f"browser tests need {' and '.join(missing)}: run .ci/browser-setup.sh"
        if _in_ci():
            pytest.fail(f"CI must run the browser tests, but {reason}", pytrace=False)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_environment(home: Path) -> dict[str, str]:
    """The server's environment: the repo importable; user config, settings, state isolated."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["JUPYTER_CONFIG_DIR"] = str(home / "config")
    env["JUPYTER_RUNTIME_DIR"] = str(home / "runtime")
    env["JUPYTERLAB_SETTINGS_DIR"] = str(home / "settings")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(home / "workspaces")
    env["IPYTHONDIR"] = str(home / "ipython")
    # Kernel specs a test adds (``lab.kernels``) come first; the installed ones stay found.
    env["JUPYTER_PATH"] = os.pathsep.join(
        filter(None, [str(home / "data"), env.get("JUPYTER_PATH")])
    )
    env.setdefault("WORKBENCH_CACHE", str(REPO / ".cache" / "workbench"))
    env["HF_HUB_OFFLINE"] = "1"  # notebooks here use local models only
    env["TOKENIZERS_PARALLELISM"] = "false"
    # No news or update checks: they would use the network and put a toast over screenshots.
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    return env


@pytest.fixture(scope="session")
def lab(browser_requirements, tmp_path_factory):
    """``jupyter lab`` on 127.0.0.1, a free port and a random token; stopped at session end."""
    home = tmp_path_factory.mktemp("lab-home")
    root = tmp_path_factory.mktemp("lab-root")
    log = home / "jupyter-lab.log"
    port, token = _free_port(), secrets.token_hex(16)
    command = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",  # ServerApp.token is deprecated
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=_lab_environment(home),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
    server = Lab(port=port, token=token, root=root, home=home, log=log, process=process)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited ({process.returncode}):\n{server.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                server.api("status", timeout=2)
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"jupyter lab did not answer in {SERVER_START_TIMEOUT} s:\n{server.log_tail()}"
                )
            time.sleep(0.5)
        yield server
    finally:
        with contextlib.suppress(Exception):  # shut kernels down cleanly first
            for kernel in server.api("kernels"):
                server.api(f"kernels/{kernel['id']}", method="DELETE", timeout=10)
        stop_process_tree(process)


@pytest.fixture(scope="session")
def browser(browser_requirements):
    """Debian's chromium, headless, launched by Playwright (no downloaded browser).

    Playwright gives each launch a fresh temporary profile (``--user-data-dir``).
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True, timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the test item (``page`` looks at it on failure)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, lab, request):
    """A fresh browser context and page that can reach only the lab server (see module doc)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=WIDGET_TIMEOUT * 1000)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(WIDGET_TIMEOUT * 1000)
    blocked: list[str] = []
    errors: list[str] = []

    def only_loopback(route):
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlparse(url).hostname in ("127.0.0.1",):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", only_loopback)
    context.add_init_script(RECORD_TITLES)
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.lab = lab
    page.blocked_requests = blocked
    page.console_errors = errors
    try:
        yield page
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:  # what the page showed, and the server said
            name = re.sub(r"\W+", "_", request.node.name)
            with contextlib.suppress(Exception):
                screenshot(page, f"FAILED-{name}")
            log = SCREENSHOTS / f"FAILED-{name}.jupyter.log"
            log.write_text(
                lab.log_tail(20000)
                + "\n--- console errors ---\n" + "\n".join(page.console_errors)
                + "\n--- blocked requests ---\n" + "\n".join(page.blocked_requests)
            )  # fmt: skip
    finally:
        context.close()
