import shutil
import tempfile

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="session")
def browser_context():
    """One headless Chromium for the session, with a fresh profile."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` to open the views' pages")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install playwright")
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield context
        context.close()


@pytest.fixture
def open_page(browser_context):
    """Open a file in a new tab; returns the page and the list its JavaScript errors land in."""
    pages = []

    def open_(path):
        page = browser_context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(f"file://{path}")
        pages.append(page)
        return page, errors

    yield open_
    for page in pages:
        page.close()
