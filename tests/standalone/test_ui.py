"""What a person sees in the Airflow UI: the trigger form explains every param, and the grid
of a finished run names each mapped namespace task by its namespace."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import pytest

from istio_upgrade.params import FORM_SECTIONS, PARAM_SPECS
from standalone.standalone_stack import OUT, Stack, UiRun

pytestmark = pytest.mark.sandbox

DAG_ID = "istio_canary_upgrade"


def test_trigger_form_shows_every_param_with_its_description(page: Any, ui_run: UiRun) -> None:
    from playwright.sync_api import expect

    page.goto(f"{ui_run.url}/dags/{DAG_ID}")
    expect(page.get_by_role("heading", name=DAG_ID)).to_be_visible()
    page.get_by_role("button", name="Trigger").first.click()
    form = page.get_by_role("dialog")
    expect(form.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()

    def open_section(section: str) -> None:
        # each section is a fold of the form (opening one may close another): open it as a
        # person would
        fold = form.get_by_role("button", name=section, exact=True)
        expect(fold, f"section {section!r}").to_be_visible()
        if fold.get_attribute("aria-expanded") != "true":
            fold.click()

    for section, names in FORM_SECTIONS.items():
        open_section(section)
        for name in names:
            spec = PARAM_SPECS[name]
            # The label is the title, with a '*' when the param is required.
            title = form.get_by_text(re.compile(rf"^{re.escape(spec.title)}\s*\*?$")).first
            expect(title, f"param {name!r}: title {spec.title!r}").to_be_visible()
            description = form.get_by_text(spec.description, exact=True)
            expect(description, f"param {name!r}: its description").to_be_visible()

    open_section("Target")
    form.locator("#element_target_revision").fill("1-32-0")
    expect(form.get_by_role("button", name="Trigger")).to_be_enabled()
    page.screenshot(path=str(OUT / "trigger-form.png"), animations="disabled")
    form.get_by_role("button", name="Close").click()  # nothing is triggered from the form


def test_grid_of_a_finished_run_names_mapped_tasks_by_namespace(
    page: Any, ui_run: UiRun, stack: Stack
) -> None:
    from playwright.sync_api import expect

    assert ui_run.state == "success", stack.progress.getvalue()
    # every namespace after the canary bar, one mapped task each
    names = [o["namespace"] for o in stack.xcom(ui_run.run_id, "remaining_namespaces")]

    run = urllib.parse.quote(ui_run.run_id, safe="")
    page.goto(f"{ui_run.url}/dags/{DAG_ID}/runs/{run}/tasks/upgrade_namespace/mapped")
    expect(page.get_by_text(f"{len(names)} Task Instances")).to_be_visible()

    rows = page.get_by_role("row")
    for ns in names:
        row = rows.filter(has=page.get_by_role("link", name=ns, exact=True))
        expect(row, f"the task of namespace {ns}").to_have_count(1)
        expect(row).to_contain_text("Success")
    page.locator("th").filter(has_text="Map Index").click()  # rows by namespace
    page.screenshot(path=str(OUT / "grid.png"), animations="disabled")
