"""The Prefect UI in headless Chromium: find the deployment, start a Custom run, watch it finish."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from playwright.sync_api import expect

from devstack.local_stack import EVERY_15_MINUTES, PROJECT_ROOT, deployment_url, flow_run_url

pytest_plugins = ["prefect_server"]
pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = (
    "the Prefect UI tests drive Debian's Chromium at /usr/bin/chromium, which is missing: "
    "install it with `apt-get install chromium` (as root; .ci/run does it). "
    "Playwright's own browser download is not used."
)
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The screenshots in docs/ are this test's; UPDATE_SCREENSHOTS=1 make test refreshes them.
# Otherwise they go to a temporary folder, so a test run leaves the working tree clean.
DOCS = PROJECT_ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else None
UI_TIMEOUT_MS = 60_000
RUN_TIMEOUT_MS = 240_000


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system's Chromium; its absence fails the tests at once, saying what to install."""
    found = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    if not found:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """Headless Chromium driven by Playwright, for this module only (it owns the event loop)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()


def test_a_custom_dry_run_from_the_ui_completes_and_sends_nothing(chromium, page, server_stack):
    stack = server_stack
    stack.reset_sandbox()
    deployment_id = stack.local.deployments[EVERY_15_MINUTES]
    refused: list[str] = []
    page.on(
        "response",
        lambda r: r.status >= 400 and "/api/" in r.url and refused.append(f"{r.status} {r.url}"),
    )

    page.goto(f"{stack.ui_url}/deployments")
    page.get_by_role("link", name=EVERY_15_MINUTES).first.click()
    page.wait_for_url(deployment_url(stack.ui_url, deployment_id) + "**")
    page.get_by_role("button", name="Run", exact=True).click()  # the sidebar has "Runs"
    page.get_by_text("Custom run").click()
    page.wait_for_url("**/run**")
    expect(page.locator(".schema-form-property textarea").first).to_have_value(
        str(stack.local.config)
    )  # the form holds the deployment's parameters: it is ready
    switch = page.locator(".schema-form-property", has_text="dry_run (Optional)").get_by_role(
        "switch"
    )
    expect(switch).to_have_attribute("aria-checked", "false")
    switch.click()
    expect(switch).to_have_attribute("aria-checked", "true")
    for _ in range(3):
        with page.expect_response(lambda r: r.url.endswith("/create_flow_run")) as created:
            page.get_by_role("button", name="Submit").click()
        response = created.value
        # 503 is the Prefect server's answer to SQLite's lock ("retryable": its own client
        # retries it); the UI shows it and the user submits again, as here
        if response.status != 503:
            break
    assert response.status == 201, f"{response.text()} {refused}"
    assert response.request.post_data_json["parameters"]["dry_run"] is True
    run_id = UUID(response.json()["id"])

    page.goto(flow_run_url(stack.ui_url, run_id))
    page.locator(".state-badge").first.filter(has_text="Completed").wait_for(timeout=RUN_TIMEOUT_MS)
    page.locator(".p-tab", has_text="Artifacts").click()
    page.get_by_text("sync-summary").first.wait_for()
    page.wait_for_timeout(1000)  # the run graph draws itself after the data arrives
    _screenshot(page, "prefect-flow-run.png")

    run = stack.wait(run_id)
    assert run.state.type.value == "COMPLETED"
    assert run.deployment_id == deployment_id
    assert run.parameters["dry_run"] is True
    assert [r for r in stack.local.sandbox.requests() if r.method == "PUT"] == []
    assert "dry run" in stack.artifacts(run_id)["sync-summary"].data

    with _schedule_shown_active(stack, deployment_id):
        page.goto(deployment_url(stack.ui_url, deployment_id))
        page.get_by_text("Every 15 minutes").wait_for()
        page.get_by_role("link", name=run.name).wait_for()  # the finished run is listed
        page.wait_for_timeout(1000)  # let the schedule's switch finish sliding
        _screenshot(page, "prefect-deployment.png")
    assert not refused, refused


class _schedule_shown_active:
    """Switch the deployment's schedule on for a screenshot, then off again (no unbidden runs)."""

    def __init__(self, stack: Any, deployment_id: UUID) -> None:
        self.stack = stack
        self.deployment_id = deployment_id

    def _set(self, active: bool) -> None:
        with self.stack.client() as client:
            for schedule in client.read_deployment(self.deployment_id).schedules:
                client.update_deployment_schedule(self.deployment_id, schedule.id, active=active)

    def __enter__(self) -> None:
        self._set(True)

    def __exit__(self, *exc: object) -> None:
        self._set(False)
        self.stack.settle()


def _screenshot(page: Any, name: str) -> None:
    """Save a screenshot (to docs/ when refreshing them) and check it is a real picture."""
    folder = DOCS or Path(tempfile.mkdtemp(prefix="inventory-sync-ui-"))
    page.screenshot(path=folder / name)
    data = (folder / name).read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000, f"{name} looks empty"
