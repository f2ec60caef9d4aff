"""Diagram generation through POST /api/diagrams/ on the offline provider: the files-per-request
limit, validation with the real parsers, real SVG from PlantUML and the Mermaid CLI, the repair
step, the max_steps bound, and the ledger matching the steps made."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from llm import diagram_render
from metering.models import Metric, UsageLog, UsageMeter, UsageReservation
from metering.services import meters_reconcile, policy_rule_set
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db(transaction=True)

DESCRIPTION = ("A sensor measures the closing speed of a door; then a controller compares it with a threshold, "
               "and a magnetorheological damper stiffens when the door closes too fast.")


def require_renderer(fmt):
    """Locally a missing renderer skips; in CI it is a failure (CI installs both)."""
    missing = diagram_render.renderer_missing(fmt)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the {fmt} renderer: {missing}")
        pytest.skip(missing)


def post(persona, body, stream=False):
    return persona.client.post("/api/diagrams/" + ("?stream=1" if stream else ""), body, format="json")


def assert_ledger_matches(body, steps):
    usage = body["usage"]
    assert usage["llm_steps"] == steps
    log = UsageLog.objects.get()
    assert log.status == UsageLog.Status.SUCCESS
    assert log.api_calls == steps == usage["api_calls"]
    assert (log.tokens_in, log.tokens_out, log.cost_micro_usd) == (
        usage["tokens_in"], usage["tokens_out"], usage["cost_micro_usd"])
    assert UsageReservation.objects.get().status == UsageReservation.Status.COMPLETED
    assert meters_reconcile() == []


def assert_real_svg(file):
    assert file["valid"] is True and file["errors"] == []
    assert file["svg_reason"] is None
    svg = file["svg"]
    assert svg and "<svg" in svg[:400] and svg.rstrip().endswith("</svg>"), (svg or "")[:200]


# --- the files-per-request limit -----------------------------------------------------------------


def test_more_files_than_diagram_files_per_req_is_refused_and_only_the_request_counts(tenant_admin):
    r = post(tenant_admin, {"description": DESCRIPTION, "kinds": ["flowchart"], "files": 6})  # PRO allows 5
    body = assert_error(r, 413, "too_many_files")
    assert body["error"]["details"] == {"files": 6, "diagram_files_per_req": 5}
    log = UsageLog.objects.get()
    assert (log.api_calls, log.tokens_in, log.tokens_out, log.cost_micro_usd) == (0, 0, 0, 0)
    assert log.status == UsageLog.Status.ERROR and log.error_code == "too_many_files"
    assert UsageReservation.objects.get().status == UsageReservation.Status.COMPLETED
    for meter in UsageMeter.objects.all():
        assert meter.reserved == 0, meter
        if meter.metric in (Metric.TOKENS, Metric.API_CALLS, Metric.COST):
            assert meter.used == 0, meter
    assert meters_reconcile() == []


def test_a_tenant_rule_lowers_the_files_limit(tenant_admin):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="diagram_files_per_req", value=1)
    assert_error(post(tenant_admin, {"description": DESCRIPTION, "kinds": ["flowchart", "state"]}), 413,
                 "too_many_files")
    assert UsageLog.objects.get().api_calls == 0
    assert meters_reconcile() == []


# --- valid files with real SVG -------------------------------------------------------------------


def test_valid_mermaid_files_of_every_kind_with_real_svg(tenant_admin):
    require_renderer("mermaid")
    kinds = ["flowchart", "sequence", "block", "state"]
    r = post(tenant_admin, {"description": DESCRIPTION, "kinds": kinds, "format": "mermaid"})
    assert r.status_code == 200, r.content
    body = r.json()
    files = body["result"]["files"]
    assert [(f["name"], f["kind"], f["format"]) for f in files] == [
        (f"diagram-{i}-{k}.mmd", k, "mermaid") for i, k in enumerate(kinds, start=1)]
    assert files[0]["source"].startswith("flowchart ")
    assert files[1]["source"].startswith("sequenceDiagram")
    assert files[3]["source"].startswith("stateDiagram-v2")
    for file in files:
        assert_real_svg(file)
        assert file["repaired"] is False
    assert "Sensor measures the closing speed" in files[0]["svg"]  # the label really was rendered
    assert body["result"]["valid"] == body["result"]["rendered"] == 4
    assert body["notes"] == []
    assert_ledger_matches(body, steps=4)


def test_valid_plantuml_files_with_real_svg(tenant_admin):
    require_renderer("plantuml")
    kinds = ["flowchart", "sequence", "block", "state"]
    r = post(tenant_admin, {"description": DESCRIPTION, "kinds": kinds, "format": "plantuml", "files": 5})
    assert r.status_code == 200, r.content
    body = r.json()
    files = body["result"]["files"]
    assert [f["kind"] for f in files] == kinds + ["flowchart"]  # kinds cycle over the files
    assert files[4]["name"] == "diagram-5-flowchart.puml"
    for file in files:
        assert file["source"].startswith("@startuml") and file["source"].rstrip().endswith("@enduml")
        assert_real_svg(file)
    assert "Sensor" in files[1]["svg"]
    assert_ledger_matches(body, steps=5)


def test_a_missing_renderer_gives_svg_null_with_a_reason_not_a_failure(tenant_admin, settings):
    settings.MMDC_BIN = "no-such-mmdc-binary"
    settings.PLANTUML_BIN = "no-such-plantuml-binary"
    for fmt, expected in (("mermaid", "Mermaid CLI is not installed"), ("plantuml", "PlantUML is not installed")):
        r = post(tenant_admin, {"description": DESCRIPTION, "kinds": ["sequence"], "format": fmt})
        assert r.status_code == 200, r.content
        (file,) = r.json()["result"]["files"]
        assert file["valid"] is True and file["svg"] is None
        assert expected in file["svg_reason"]
        assert UsageLog.objects.get(request_id=r.json()["request_id"]).api_calls == 1
    assert UsageLog.objects.count() == 2
    assert meters_reconcile() == []


# --- repair and the step budget ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mermaid", "plantuml"])
def test_an_invalid_file_gets_a_repair_step(tenant_admin, fmt):
    require_renderer(fmt)
    r = post(tenant_admin, {"description": DESCRIPTION + " [offline:broken]", "kinds": ["flowchart", "sequence"],
                            "format": fmt})
    assert r.status_code == 200, r.content
    body = r.json()
    for file in body["result"]["files"]:
        assert file["repaired"] is True
        assert_real_svg(file)
    assert body["notes"] == []
    assert_ledger_matches(body, steps=4)  # 2 generations + 2 repairs


def test_repair_stops_at_max_steps_leaving_the_file_invalid_with_a_note(tenant_admin, settings):
    settings.MMDC_BIN = "no-such-mmdc-binary"  # the budget is what is tested here, not rendering
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_steps", value=3)
    r = post(tenant_admin, {"description": DESCRIPTION + " [offline:broken]", "kinds": ["flowchart", "state"]})
    assert r.status_code == 200, r.content
    body = r.json()
    first, second = body["result"]["files"]
    assert first["repaired"] is True and first["valid"] is True
    assert second["repaired"] is False and second["valid"] is False
    assert second["errors"] and second["svg"] is None and "invalid" in second["svg_reason"]
    assert second["source"].startswith("stateDiagram-v2\n    A[Receive input")
    assert len(body["notes"]) == 1
    assert "max_steps = 3" in body["notes"][0] and "diagram-2-state.mmd" in body["notes"][0]
    assert_ledger_matches(body, steps=3)


def test_generation_stops_at_max_steps_with_the_files_made_so_far(tenant_admin, settings):
    settings.MMDC_BIN = "no-such-mmdc-binary"
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_steps", value=2)
    r = post(tenant_admin, {"description": DESCRIPTION, "kinds": ["flowchart", "sequence", "block", "state"]})
    assert r.status_code == 200, r.content
    body = r.json()
    assert [f["name"] for f in body["result"]["files"]] == ["diagram-1-flowchart.mmd", "diagram-2-sequence.mmd"]
    assert body["result"]["files_requested"] == 4
    assert "max_steps = 2" in body["notes"][0]
    assert "diagram-3-block.mmd, diagram-4-state.mmd" in body["notes"][0]
    assert_ledger_matches(body, steps=2)


def test_progress_events_one_per_step_then_the_result(tenant_admin, settings):
    settings.MMDC_BIN = "no-such-mmdc-binary"
    r = post(tenant_admin, {"description": DESCRIPTION + " [offline:broken]", "kinds": ["block"]}, stream=True)
    assert r.status_code == 200 and r["Content-Type"] == "text/event-stream"
    events = [block for block in b"".join(r).decode().split("\n\n") if block]
    parsed = [(e.split("\n")[0].removeprefix("event: "), json.loads(e.split("\n")[1].removeprefix("data: ")))
              for e in events]
    assert [(name, data.get("step")) for name, data in parsed] == [
        ("progress", "generate:diagram-1-block.mmd"), ("progress", "repair:diagram-1-block.mmd"), ("result", None)]
    result = parsed[-1][1]
    assert result["result"]["files"][0]["valid"] is True and result["usage"]["api_calls"] == 2
    assert UsageLog.objects.get().api_calls == 2
    assert meters_reconcile() == []


@pytest.mark.parametrize("body", [
    {},
    {"description": "x", "kinds": ["pie"]},
    {"description": "x", "format": "graphviz"},
    {"description": "x", "files": 0},
    {"description": "x", "files": "2"},
    {"description": "x", "kinds": ["flowchart", "state"], "files": 1},
])
def test_bad_input_is_400_and_charges_nothing(tenant_admin, body):
    assert_error(post(tenant_admin, body), 400, "invalid_input")
    assert not UsageLog.objects.exists()


# --- validation units ----------------------------------------------------------------------------


@pytest.mark.parametrize("source, fmt, kind, expected", [
    ("flowchart TD\n    A[Start --> B\n", "mermaid", "flowchart", "line 2: unclosed '['"),
    ("flowchart TD\n    subgraph S\n    A --> B\n", "mermaid", "block", "1 'subgraph' block(s) not closed with 'end'"),
    ("sequenceDiagram\n    A->>B: hi\n", "mermaid", "flowchart", "a flowchart diagram was requested, but this is"),
    ("sequenceDiagram\n    loop forever\n    A->>B: hi\n", "mermaid", "sequence", "not closed with 'end'"),
    ("sequenceDiagram\n    A B C\n", "mermaid", "sequence", "line 2: not a valid sequence diagram statement"),
    ("stateDiagram-v2\n    [*] --> A\n    A -> B\n", "mermaid", "state", "line 3: not a valid state diagram"),
    ("hello\n", "mermaid", "state", "expected a Mermaid state header"),
    ("@startuml\nstart\n:do it\nstop\n@enduml\n", "plantuml", "flowchart", "is not terminated with ';'"),
    ("@startuml\nA -> B : hi\n", "plantuml", "sequence", "must end with @enduml"),
    ("@startuml\nstart\nif (x) then (y)\n:a;\nstop\n@enduml\n", "plantuml", "flowchart", "'if' and 'endif'"),
    ("@startuml\n[*] --> A\n@enduml\n", "plantuml", "sequence", "needs a message"),
    ("@startuml\n!include /etc/passwd\nA -> B : hi\n@enduml\n", "plantuml", "sequence", "line 2: includes"),
    ("@startuml\nA -> B : %getenv(\"HOME\")\n@enduml\n", "plantuml", "sequence", "are not allowed"),
])
def test_syntax_check_finds_the_error(source, fmt, kind, expected):
    errors = diagram_render.syntax_check(source, fmt, kind)
    assert any(expected in e for e in errors), errors


def test_fenced_answers_are_unwrapped():
    assert diagram_render.extract_source("Here:\n```mermaid\nflowchart TD\n  A --> B\n```\nDone.", "mermaid") == \
        "flowchart TD\n  A --> B\n"
    assert diagram_render.extract_source("x @startuml\nA -> B : hi\n@enduml y", "plantuml") == \
        "@startuml\nA -> B : hi\n@enduml\n"


@pytest.mark.parametrize("fmt, kind, source", [
    ("mermaid", "flowchart", "flowchart TD\n    A --> B\n    B --> --> C\n"),
    ("plantuml", "sequence", "@startuml\nAlice -> Bob : hi\nfoo bar baz\n@enduml\n"),
])
def test_the_real_parser_catches_what_the_syntax_check_lets_through(fmt, kind, source):
    require_renderer(fmt)
    assert diagram_render.syntax_check(source, fmt, kind) == []
    check = asyncio.run(diagram_render.diagram_check(source, fmt, kind))
    assert check.valid is False and check.svg is None
    assert check.errors and check.errors[0].startswith(f"{fmt}: ")


def test_a_renderer_that_hangs_is_killed_at_the_timeout(settings, tmp_path):
    slow = tmp_path / "plantuml"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    settings.PLANTUML_BIN = str(slow)
    settings.DIAGRAM_RENDER_TIMEOUT = 0.5
    check = asyncio.run(diagram_render.diagram_check("@startuml\nA -> B : hi\n@enduml\n", "plantuml", "sequence"))
    assert check.valid is True and check.svg is None
    assert check.svg_reason == "PlantUML timed out after 0.5s"
