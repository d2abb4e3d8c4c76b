#!/usr/bin/env bash
# Browser-test prerequisites, idempotent: Debian's chromium (no Playwright browser download)
# and the `playwright` Python package (its wheel bundles the node driver) in the repo's venv.
# Usage: .ci/browser-setup.sh   (as root, or with sudo available, for apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
fi

# The Jupyter server extension that saves notebooks with static panels: a wheel install
# enables it itself, an editable one (pip install -e) does not (setuptools skips data files).
.venv/bin/python -m workbench.widgets._snapshot

if ! .venv/bin/python -c "import playwright.sync_api" 2>/dev/null; then
    .venv/bin/pip install playwright
fi

# Check that playwright can drive the system chromium (no network, no browser download).
.venv/bin/python - <<'PY'
from playwright.sync_api import sync_playwright

flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=flags, timeout=60_000)
    page = browser.new_page()
    page.set_content("<title>ok</title><p>ok</p>")
    assert page.title() == "ok", page.title()
    print("playwright drives", browser.version, "at /usr/bin/chromium")
    browser.close()
PY
