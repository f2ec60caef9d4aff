"""The rollout report (issue 15 §1): a SHADOW tenant's traffic beyond its limits, through the real /v1
API, and the report that says which calls HARD would have refused and why (every code, every rule),
with their tokens and cost; read from the would-refuse rollup, on both holds backends; the command's
text, JSON and CSV; the super-admin API (staff only); the `would_refuse_total` counter."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from catalog.models import Task
from metering.models import PolicyRule, UsageLog, WouldRefuseDaily
from metering.rollout import rollout_report
from metering.services import meters_reconcile, policy_rule_set
from tenants.models import User
from tenants.services import tenant_set_enforcement_mode
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM2_DRAFT"
SHORT = [{"role": "user", "content": "Describe a widget"}]
LONG = [{"role": "user", "content": "Describe a widget with a hinge, a spring, a latch and a lid " * 4}]
BACKENDS = ["python"] + (["postgres"] if os.environ.get("DATABASE_URL", "").startswith("postgres") else [])


@pytest.fixture(params=BACKENDS)
def backend(request, settings):
    settings.METERING_HOLDS_BACKEND = request.param
    return request.param


def chat(persona, messages=SHORT):
    return persona.client.post(f"/v1/{TASK}/chat/completions", {"model": "auto", "messages": messages,
                                                                "max_tokens": 50}, format="json")


def shadow_traffic(tenant_admin, member) -> dict[str, PolicyRule]:
    """A SHADOW tenant over two token quotas (a tenant-wide one and one of the task) on every call, and
    over its input limit on one: three calls served, all three of which HARD would have refused."""
    tenant = tenant_admin.tenant
    tenant_set_enforcement_mode(slug=tenant.slug, mode="SHADOW")
    rules = {
        "day": policy_rule_set(scope="TENANT", tenant=tenant, key="tenant_tokens_per_day", value=10),
        "task_day": policy_rule_set(scope="TENANT", tenant=tenant, key="tenant_tokens_per_day", value=20,
                                    task=Task.objects.get(code=TASK)),
        "input": policy_rule_set(scope="TENANT", tenant=tenant, key="max_tokens_in", value=30),
    }
    for persona, messages in ((tenant_admin, SHORT), (member, SHORT), (member, LONG)):
        response = chat(persona, messages)
        assert response.status_code == 200, response.content
    return rules


def ledger_totals(tenant) -> dict[str, int]:
    rows = list(UsageLog.objects.filter(tenant=tenant).exclude(would_refuse=[]))
    return {"calls": len(rows), "tokens": sum(r.tokens_in + r.tokens_out for r in rows),
            "cost_micro_usd": sum(r.cost_micro_usd for r in rows)}


def test_the_report_says_which_calls_hard_would_have_refused_and_why(tenant_admin, member, outsider, backend):
    rules = shadow_traffic(tenant_admin, member)
    # Another tenant, HARD, within its limits: nothing to report there.
    assert chat(outsider).status_code == 200

    # The ledger keeps every reason of every call, the one HARD would have returned first.
    quota = [{"code": "quota_exceeded", "key": "tenant_tokens_per_day", "rule": rules["day"].pk},
             {"code": "quota_exceeded", "key": "tenant_tokens_per_day", "rule": rules["task_day"].pk}]
    logs = list(UsageLog.objects.filter(tenant=tenant_admin.tenant).order_by("pk"))
    assert [(log.status, log.enforcement_mode) for log in logs] == [("SUCCESS", "SHADOW")] * 3
    for log in logs[:2]:
        assert log.would_refuse_code == "quota_exceeded"
        assert sorted(log.would_refuse, key=lambda r: r["rule"]) == quota
    assert logs[2].would_refuse_code == "input_too_large"
    assert logs[2].would_refuse[0] == {"code": "input_too_large", "key": "max_tokens_in", "rule": rules["input"].pk}
    assert sorted(logs[2].would_refuse[1:], key=lambda r: r["rule"]) == quota
    assert UsageLog.objects.get(tenant=outsider.tenant).would_refuse == []

    today = timezone.now().date()
    report = rollout_report(day_from=today - timedelta(days=1), day_to=today)
    expected = ledger_totals(tenant_admin.tenant)
    assert expected["calls"] == 3 and expected["tokens"] > 0 and expected["cost_micro_usd"] > 0
    (part,) = report["tenants"]  # the HARD tenant refused nothing and is not listed
    assert (part["tenant"], part["effective_mode"], part["enforcement_mode"]) == (tenant_admin.tenant.slug,
                                                                                  "SHADOW", "SHADOW")
    assert {k: part["switch_to_hard"][k] for k in expected} == expected
    assert part["switch_to_hard"]["summary"] == (
        f"Switching to HARD would have refused 3 calls / {expected['tokens']:,} tokens / "
        f"${expected['cost_micro_usd'] / 1_000_000:,.6f}.")
    assert [(r["code"], r["calls"]) for r in part["by_code"]] == [("input_too_large", 1), ("quota_exceeded", 3)]
    assert sorted((r["code"], r["policy_key"], r["rule_id"], r["calls"]) for r in part["by_rule"]) == sorted([
        ("input_too_large", "max_tokens_in", rules["input"].pk, 1),
        ("quota_exceeded", "tenant_tokens_per_day", rules["day"].pk, 3),
        ("quota_exceeded", "tenant_tokens_per_day", rules["task_day"].pk, 3),
    ])
    by_rule = {r["rule_id"]: r for r in part["by_rule"]}
    assert by_rule[rules["day"].pk]["tokens"] == expected["tokens"]
    assert by_rule[rules["input"].pk]["tokens"] == logs[2].tokens_in + logs[2].tokens_out
    assert f"rule #{rules['task_day'].pk} tenant" in by_rule[rules["task_day"].pk]["rule"]
    assert f"= 20 ({TASK})" in by_rule[rules["task_day"].pk]["rule"]
    assert [(d["day"], d["calls"]) for d in part["by_day"]] == [(today.isoformat(), 3)]
    assert [(t["task"], t["calls"]) for t in part["by_task"]] == [(TASK, 3)]
    assert {k: report["total"][k] for k in expected} == expected  # the whole gateway: this tenant only
    assert meters_reconcile() == []

    # A period without those days has nothing; the tenant filter narrows to one tenant.
    empty = rollout_report(tenant=tenant_admin.tenant, day_from=today - timedelta(days=9),
                           day_to=today - timedelta(days=2))
    assert empty["tenants"][0]["calls"] == 0 and empty["total"]["by_code"] == []
    assert rollout_report(tenant=outsider.tenant, day_from=today, day_to=today)["total"]["calls"] == 0

    # What the report said is what HARD does: the same call is refused, for the first reason.
    tenant_set_enforcement_mode(slug=tenant_admin.tenant.slug, mode="HARD")
    assert_error(chat(member, LONG), 413, "input_too_large")
    assert_error(chat(member), 429, "quota_exceeded")
    # Refusals are not "let through": the report is unchanged.
    assert rollout_report(day_from=today, day_to=today)["total"]["calls"] == 3


def test_the_rollup_is_what_the_report_reads(tenant_admin, member, backend):
    shadow_traffic(tenant_admin, member)
    rows = {(r.code, r.policy_key): r.calls for r in WouldRefuseDaily.objects.filter(tenant=tenant_admin.tenant)}
    assert rows == {("", ""): 3,  # each call once
                    ("input_too_large", ""): 1, ("quota_exceeded", ""): 3,  # once per code
                    ("input_too_large", "max_tokens_in"): 1, ("quota_exceeded", "tenant_tokens_per_day"): 3}
    assert WouldRefuseDaily.objects.filter(code="quota_exceeded").exclude(policy_key="").count() == 2  # a rule each
    # The report reads the rollup, not the ledger: a rollup row alone is reported.
    WouldRefuseDaily.objects.filter(code="").update(calls=42)
    today = timezone.now().date()
    assert rollout_report(day_from=today, day_to=today)["total"]["calls"] == 42


def test_soft_mode_is_reported_too(tenant_admin, backend):
    tenant_set_enforcement_mode(slug=tenant_admin.tenant.slug, mode="SOFT")
    rule = policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_tokens_per_day", value=10)
    response = chat(tenant_admin)
    assert response.status_code == 200 and "quota_exceeded" in response.headers["X-Gateway-Warning"]
    today = timezone.now().date()
    (part,) = rollout_report(day_from=today, day_to=today)["tenants"]
    assert (part["effective_mode"], part["calls"]) == ("SOFT", 1)
    assert [(r["code"], r["rule_id"]) for r in part["by_rule"]] == [("quota_exceeded", rule.pk)]


def test_a_tenant_in_shadow_is_listed_before_it_would_have_refused_anything(tenant_admin, outsider):
    tenant_set_enforcement_mode(slug=outsider.tenant.slug, mode="SHADOW")
    today = timezone.now().date()
    report = rollout_report(day_from=today, day_to=today)
    assert [(t["tenant"], t["calls"]) for t in report["tenants"]] == [(outsider.tenant.slug, 0)]
    assert report["total"]["summary"] == "Switching to HARD would have refused 0 calls / 0 tokens / $0.000000."


# --- the command --------------------------------------------------------------------------------


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("rollout_report", *args, stdout=out)
    return out.getvalue()


def test_the_command_prints_text_json_and_csv(tenant_admin, member, outsider):
    rules = shadow_traffic(tenant_admin, member)
    slug = tenant_admin.tenant.slug
    expected = ledger_totals(tenant_admin.tenant)

    text = run()
    assert f"{slug} (mode SHADOW): Switching to HARD would have refused 3 calls / {expected['tokens']:,} tokens" in text
    assert f"quota_exceeded by rule #{rules['day'].pk}" in text

    report = json.loads(run("--json", "--tenant", slug))
    assert json.loads(run("--format", "json", "--tenant", slug)) == report
    assert report["tenant"] == slug and report["tenants"][0]["switch_to_hard"]["calls"] == 3
    assert report["total"]["tokens"] == expected["tokens"]
    assert report["total"]["cost_micro_usd"] == expected["cost_micro_usd"]

    rows = list(csv.DictReader(io.StringIO(run("--format", "csv", "--tenant", slug))))
    totals = [r for r in rows if r["breakdown"] == "total"]
    assert [(r["tenant"], r["calls"]) for r in totals] == [("*", "3"), (slug, "3")]
    by_rule = {(r["code"], r["rule_id"]): r["calls"] for r in rows if r["breakdown"] == "rule" and r["tenant"] == slug}
    assert by_rule == {("input_too_large", str(rules["input"].pk)): "1",
                       ("quota_exceeded", str(rules["day"].pk)): "3",
                       ("quota_exceeded", str(rules["task_day"].pk)): "3"}

    today = timezone.now().date()
    old = json.loads(run("--json", "--from", str(today - timedelta(days=5)), "--to", str(today - timedelta(days=1))))
    assert old["total"]["calls"] == 0


def test_the_command_refuses_bad_input(db):
    with pytest.raises(CommandError, match="No tenant"):
        run("--tenant", "nobody")
    with pytest.raises(CommandError, match="must not be after"):
        run("--from", "2026-03-10", "--to", "2026-03-01")
    with pytest.raises(CommandError, match="at most"):
        run("--from", "2024-01-01", "--to", "2026-01-01")


# --- the super-admin API ------------------------------------------------------------------------

URL = "/api/admin/rollout-report/"


def test_the_api_is_for_staff_only(tenant_admin, member, settings):
    shadow_traffic(tenant_admin, member)
    root = User.objects.create_superuser(username="root-admin", email="root@example.com", password="x-Very-long-42")
    staff = User.objects.create_user(username="ops-staff", password="x-Very-long-42", is_staff=True)
    for user in (root, staff):
        client = Client()
        client.force_login(user)
        response = client.get(URL, {"tenant": tenant_admin.tenant.slug})
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["tenants"][0]["switch_to_hard"]["calls"] == 3
        assert {r["code"] for r in body["total"]["by_code"]} == {"input_too_large", "quota_exceeded"}

    # Tenants' users (their bearer tokens authenticate them everywhere else) and anonymous callers: 403.
    assert_error(tenant_admin.django_client.get(URL), 403, "forbidden")
    assert_error(member.django_client.get(URL), 403, "forbidden")
    assert_error(Client().get(URL), 403, "not_authenticated")
    # A staff password session that still owes its second factor is not a staff session.
    settings.STAFF_REQUIRE_2FA = True
    client = Client()
    client.force_login(staff)
    assert_error(client.get(URL), 403, "forbidden")


def test_the_api_validates_its_parameters(db):
    client = Client()
    client.force_login(User.objects.create_superuser(username="root-admin", email="r@example.com", password="x"))
    assert_error(client.get(URL, {"tenant": "nobody"}), 404, "tenant_unknown")
    assert_error(client.get(URL, {"from": "2026-03-10", "to": "2026-03-01"}), 400, "validation_error")
    assert_error(client.get(URL, {"from": "yesterday"}), 400, "validation_error")
    ok = client.get(URL, {"from": "2026-03-01", "to": "2026-03-10"})
    assert ok.status_code == 200 and ok.json()["total"]["calls"] == 0 and ok.json()["from"] == "2026-03-01"


# --- the counter --------------------------------------------------------------------------------


def scrape() -> dict[tuple, float]:
    text = Client().get("/metrics").content.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_would_refuse_total_counts_each_call_once_per_code(tenant_admin, member):
    def count(samples: dict, code: str) -> float:
        return samples.get(("would_refuse_total", (("code", code), ("task", TASK))), 0.0)

    before = scrape()
    shadow_traffic(tenant_admin, member)
    after = scrape()
    assert count(after, "quota_exceeded") - count(before, "quota_exceeded") == 3  # two rules, counted once a call
    assert count(after, "input_too_large") - count(before, "input_too_large") == 1
