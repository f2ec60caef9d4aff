"""Caller-facing enforcement reads through HTTP: /api/limits/, /api/quota/, /api/usage/, /api/usage/logs/."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.pagination import PageNumberPagination

from catalog.models import ProviderModel, Task
from metering.models import PolicyRule, UsageLog
from metering.services import meters_reconcile, policy_rule_set
from tests.conftest import Persona, assert_error

pytestmark = pytest.mark.django_db(transaction=True)

ENDPOINTS = ["/api/limits/", "/api/quota/", "/api/usage/", "/api/usage/logs/"]


def chat(persona: Persona, task: str = "LLM2_DRAFT", model: str = "auto", content: str = "Describe a widget"):
    return persona.client.post(f"/v1/{task}/chat/completions",
                               {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 60},
                               format="json")


def plan_rule(key: str, task: str | None = None, plan: str = "PRO") -> PolicyRule:
    return PolicyRule.objects.get(scope=PolicyRule.Scope.PLAN, plan__code=plan, key=key, task__code=task,
                                  when_quota_key="")


def limits_by_key(persona: Persona, task: str) -> dict[str, list[dict]]:
    r = persona.client.get("/api/limits/")
    assert r.status_code == 200, r.content
    out: dict[str, list[dict]] = defaultdict(list)
    for row in r.json()["limits"][task]:
        out[row["key"]].append(row)
    return out


def one(rows: list[dict]) -> dict:
    assert len(rows) == 1, rows
    return rows[0]


def quota_rows(persona: Persona) -> dict[tuple[str, str | None], dict]:
    r = persona.client.get("/api/quota/")
    assert r.status_code == 200, r.content
    rows = r.json()["meters"]
    keyed = {(row["key"], row["task"]): row for row in rows}
    assert len(keyed) == len(rows), rows  # one row per limit and task
    return keyed


def cost_of(model_name: str, tokens_in: int, tokens_out: int) -> int:
    model = ProviderModel.objects.get(model_name=model_name)
    numerator = tokens_in * model.input_price_per_mtok_micro_usd + tokens_out * model.output_price_per_mtok_micro_usd
    return -(-numerator // 1_000_000)


# --- /api/limits/ -------------------------------------------------------------------------------


def test_limits_show_the_plan_values_and_the_rules_they_came_from(tenant_admin):
    limits = limits_by_key(tenant_admin, "LLM2_DRAFT")

    max_in = one(limits["max_tokens_in"])
    assert max_in["value"] == 32_000 and max_in["kind"] == "per_request" and max_in["unit"] == "tokens"
    assert max_in["source"] == f"rule #{plan_rule('max_tokens_in').pk} (plan PRO)"
    assert max_in["applies_to_task"] is None

    concurrent = one(limits["max_concurrent"])
    assert (concurrent["value"], concurrent["applies_to_task"], concurrent["kind"]) == (2, "LLM2_DRAFT", "concurrency")
    assert concurrent["source"] == f"rule #{plan_rule('max_concurrent', 'LLM2_DRAFT').pk} (plan PRO)"

    daily = one(limits["tenant_tokens_per_day"])
    assert (daily["value"], daily["kind"]) == (500_000, "quota")
    assert one(limits["tenant_rpm"])["kind"] == "rate"
    # The monthly budget of 250 USD, in the integer micro-USD the meters count.
    cost = one(limits["tenant_cost_per_month_usd"])
    assert (cost["value"], cost["unit"]) == (250_000_000, "micro-USD")
    # Task-specific keys only show under their task.
    assert "agent_max_steps" in limits and "retrieval_top_k" not in limits
    prior_art = limits_by_key(tenant_admin, "LLM1_PRIOR_ART")
    assert one(prior_art["retrieval_top_k"])["value"] == 25
    assert one(prior_art["max_concurrent"])["value"] == 3
    assert set(tenant_admin.client.get("/api/limits/").json()["limits"]) == {"LLM1_PRIOR_ART", "LLM2_DRAFT",
                                                                              "LLM3_DIAGRAM"}


def test_limits_name_the_most_specific_rule(tenant_admin, member):
    tenant = tenant_admin.tenant
    diagram = Task.objects.get(code="LLM3_DIAGRAM")
    draft = Task.objects.get(code="LLM2_DRAFT")
    all_tasks = policy_rule_set(scope="TENANT", tenant=tenant, key="max_tokens_in", value=1_000)
    one_task = policy_rule_set(scope="TENANT", tenant=tenant, key="max_tokens_in", value=500, task=diagram)
    for_member = policy_rule_set(scope="USER", user=member.user, key="max_tokens_out", value=256, task=draft)
    daily = policy_rule_set(scope="TENANT", tenant=tenant, key="tenant_tokens_per_day", value=1_234)

    admin_draft = limits_by_key(tenant_admin, "LLM2_DRAFT")
    assert one(admin_draft["max_tokens_in"])["value"] == 1_000
    assert one(admin_draft["max_tokens_in"])["source"] == f"rule #{all_tasks.pk} (tenant {tenant.slug})"
    assert one(admin_draft["max_tokens_out"])["value"] == 4_096  # the user rule is the member's only
    assert one(admin_draft["max_tokens_out"])["source"] == f"rule #{plan_rule('max_tokens_out').pk} (plan PRO)"
    assert one(admin_draft["tenant_tokens_per_day"])["value"] == 1_234
    assert one(admin_draft["tenant_tokens_per_day"])["source"] == f"rule #{daily.pk} (tenant {tenant.slug})"

    admin_diagram = limits_by_key(tenant_admin, "LLM3_DIAGRAM")
    assert one(admin_diagram["max_tokens_in"])["value"] == 500
    assert one(admin_diagram["max_tokens_in"])["source"] == f"rule #{one_task.pk} (tenant {tenant.slug})"
    assert one(admin_diagram["max_tokens_in"])["applies_to_task"] == "LLM3_DIAGRAM"

    member_draft = limits_by_key(member, "LLM2_DRAFT")
    assert one(member_draft["max_tokens_out"])["value"] == 256
    assert one(member_draft["max_tokens_out"])["source"] == f"rule #{for_member.pk} (user acme-member)"
    assert one(limits_by_key(member, "LLM1_PRIOR_ART")["max_tokens_out"])["value"] == 4_096


def test_limits_of_another_tenant_are_not_affected(tenant_admin, outsider):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_in", value=1_000)

    assert one(limits_by_key(outsider, "LLM2_DRAFT")["max_tokens_in"])["value"] == 32_000


# --- /api/quota/ --------------------------------------------------------------------------------


def test_quota_after_a_call(tenant_admin):
    daily = policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_tokens_per_day", value=1_000)
    r = chat(tenant_admin)
    assert r.status_code == 200, r.content
    used = r.json()["usage"]["total_tokens"]

    rows = quota_rows(tenant_admin)

    day = rows[("tenant_tokens_per_day", None)]
    assert (day["metric"], day["window"], day["subject"]) == ("TOKENS", "DAY", "tenant")
    assert (day["used"], day["reserved"], day["limit"]) == (used, 0, 1_000)
    assert day["remaining"] == 1_000 - used
    assert day["percent"] == round(used * 100 / 1_000, 1) > 0
    assert day["source"] == f"rule #{daily.pk} (tenant {tenant_admin.tenant.slug})"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert datetime.fromisoformat(day["resets_at"].replace("Z", "+00:00")) == datetime(
        tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC
    )

    month = rows[("tenant_tokens_per_month", None)]
    assert (month["window"], month["used"], month["limit"]) == ("MONTH", used, 5_000_000)
    resets = datetime.fromisoformat(month["resets_at"].replace("Z", "+00:00"))
    assert resets.day == 1 and resets > datetime.now(UTC)

    mine = rows[("user_tokens_per_month", None)]
    assert (mine["subject"], mine["used"]) == ("user", used)

    log = UsageLog.objects.get()
    cost = rows[("tenant_cost_per_month_usd", None)]
    assert (cost["metric"], cost["used"], cost["limit"]) == ("COST", log.cost_micro_usd, 250_000_000)
    assert rows[("tenant_api_calls_per_month", None)]["used"] == 1

    slots = rows[("max_concurrent", "LLM2_DRAFT")]
    assert (slots["window"], slots["used"], slots["reserved"], slots["limit"]) == ("NONE", 0, 0, 2)
    assert slots["resets_at"] is None
    assert rows[("max_concurrent", "LLM1_PRIOR_ART")]["limit"] == 3
    assert meters_reconcile() == []


def test_quota_before_any_call_shows_zero(tenant_admin):
    rows = quota_rows(tenant_admin)

    assert rows[("tenant_tokens_per_day", None)]["used"] == 0
    assert rows[("tenant_tokens_per_day", None)]["percent"] == 0
    assert all(row["used"] == 0 and row["reserved"] == 0 for row in rows.values())


def test_quota_user_meters_are_the_callers_own(tenant_admin, member, outsider):
    r = chat(member)
    assert r.status_code == 200, r.content
    used = r.json()["usage"]["total_tokens"]

    admin_rows = quota_rows(tenant_admin)
    member_rows = quota_rows(member)

    assert admin_rows[("tenant_tokens_per_day", None)]["used"] == used  # the tenant's meter
    assert admin_rows[("user_tokens_per_month", None)]["used"] == 0  # the admin's own meter
    assert member_rows[("user_tokens_per_month", None)]["used"] == used
    assert member_rows[("tenant_tokens_per_day", None)]["used"] == used
    assert all(row["used"] == 0 for row in quota_rows(outsider).values())
    assert meters_reconcile() == []


# --- /api/usage/ --------------------------------------------------------------------------------


@pytest.fixture
def traffic(tenant_admin, member, outsider):
    """A few calls by two users of one tenant (one refused) and one by another tenant.

    Returns the expected per-call usage, taken from the responses and the catalog prices.
    """
    calls = [
        (tenant_admin, "LLM2_DRAFT", "auto", "First draft"),
        (tenant_admin, "LLM2_DRAFT", "PRO_L", "Second draft, larger model"),
        (member, "LLM2_DRAFT", "auto", "Member draft"),
        (member, "LLM1_PRIOR_ART", "auto", "Prior art please"),
        (outsider, "LLM2_DRAFT", "auto", "Globex draft"),
    ]
    rows = []
    for persona, task, model, content in calls:
        r = chat(persona, task, model, content)
        assert r.status_code == 200, r.content
        data = r.json()
        rows.append({
            "tenant": persona.tenant.pk, "user": persona.user.username, "task": task, "model": data["model"],
            "tokens_in": data["usage"]["prompt_tokens"], "tokens_out": data["usage"]["completion_tokens"],
            "cost": cost_of(data["model"], data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"]),
            "request_id": r.headers["X-Request-ID"],
        })
    refused = chat(member, "LLM2_DRAFT", "ADVANCED", "Not on my plan")
    assert_error(refused, 403, "model_class_not_allowed")
    assert meters_reconcile() == []
    return rows


def expected(rows: list[dict], group: str, *, tenant: int, user: str | None = None) -> dict:
    out: dict = {}
    for row in rows:
        if row["tenant"] != tenant or (user and row["user"] != user):
            continue
        agg = out.setdefault(row[group], {"tokens_in": 0, "tokens_out": 0, "cost_micro_usd": 0, "requests": 0})
        agg["tokens_in"] += row["tokens_in"]
        agg["tokens_out"] += row["tokens_out"]
        agg["cost_micro_usd"] += row["cost"]
        agg["requests"] += 1
    return out


def usage(persona: Persona, group_by: str, **params) -> dict:
    r = persona.client.get("/api/usage/", {"group_by": group_by, **params})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["group_by"] == group_by
    return {row[group_by]: row for row in body["results"]}


def assert_matches(actual: dict, wanted: dict, *, refused: dict | None = None) -> None:
    refused = refused or {}
    assert set(actual) == set(wanted) | set(refused), (actual, wanted)
    for name, row in actual.items():
        want = wanted.get(name, {"tokens_in": 0, "tokens_out": 0, "cost_micro_usd": 0, "requests": 0})
        assert row["tokens_in"] == want["tokens_in"], name
        assert row["tokens_out"] == want["tokens_out"], name
        assert row["total_tokens"] == want["tokens_in"] + want["tokens_out"], name
        assert row["cost_micro_usd"] == want["cost_micro_usd"], name
        assert row["requests"] == want["requests"], name
        assert row["api_calls"] == want["requests"], name  # one provider call each
        assert row["refused"] == refused.get(name, 0), name


def test_usage_group_by_task(traffic, tenant_admin):
    assert_matches(usage(tenant_admin, "task"), expected(traffic, "task", tenant=tenant_admin.tenant.pk),
                   refused={"LLM2_DRAFT": 1})


def test_usage_group_by_user(traffic, tenant_admin):
    assert_matches(usage(tenant_admin, "user"), expected(traffic, "user", tenant=tenant_admin.tenant.pk),
                   refused={"acme-member": 1})


def test_usage_group_by_model(traffic, tenant_admin):
    result = usage(tenant_admin, "model")
    wanted = expected(traffic, "model", tenant=tenant_admin.tenant.pk)
    assert set(wanted) == {"offline-pro-m", "offline-pro-l", "offline-base-s"}
    assert_matches(result, wanted, refused={"": 1})  # a refused call never reached a model


def test_usage_group_by_day(traffic, tenant_admin):
    today = datetime.now(UTC).date().isoformat()
    per_day = {today: expected(traffic, "tenant", tenant=tenant_admin.tenant.pk)[tenant_admin.tenant.pk]}

    assert_matches(usage(tenant_admin, "day"), per_day, refused={today: 1})


def test_usage_defaults_to_task_and_the_last_30_days(traffic, tenant_admin):
    r = tenant_admin.client.get("/api/usage/")

    assert r.status_code == 200, r.content
    body = r.json()
    today = datetime.now(UTC).date()
    assert (body["group_by"], body["to"], body["from"]) == ("task", today.isoformat(),
                                                            (today - timedelta(days=30)).isoformat())
    assert {row["task"] for row in body["results"]} == {"LLM1_PRIOR_ART", "LLM2_DRAFT"}


def test_usage_date_range_filters(traffic, tenant_admin):
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)

    assert usage(tenant_admin, "task", **{"from": "2020-01-01", "to": "2020-01-31"}) == {}
    assert usage(tenant_admin, "task", **{"from": yesterday.isoformat(), "to": yesterday.isoformat()}) == {}
    assert usage(tenant_admin, "task", **{"from": today.isoformat(), "to": today.isoformat()}).keys() == {
        "LLM1_PRIOR_ART", "LLM2_DRAFT"}


def test_members_see_only_their_own_usage(traffic, member):
    me = member.user.username
    assert set(usage(member, "user")) == {me}
    assert_matches(usage(member, "task"), expected(traffic, "task", tenant=member.tenant.pk, user=me),
                   refused={"LLM2_DRAFT": 1})
    assert_matches(usage(member, "user"), expected(traffic, "user", tenant=member.tenant.pk, user=me),
                   refused={me: 1})


def test_an_outsider_sees_only_their_own_tenant(traffic, outsider):
    assert set(usage(outsider, "user")) == {"globex-admin"}
    assert_matches(usage(outsider, "task"), expected(traffic, "task", tenant=outsider.tenant.pk))


def test_an_outsider_without_calls_sees_nothing(tenant_admin, outsider):
    assert chat(tenant_admin).status_code == 200

    for group_by in ("task", "user", "day", "model"):
        assert usage(outsider, group_by) == {}
    r = outsider.client.get("/api/usage/logs/")
    assert r.status_code == 200 and r.json()["count"] == 0 and r.json()["results"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"group_by": "tenant"},
        {"group_by": ""},
        {"from": "2026-02-01", "to": "2026-01-01"},
        {"from": "not-a-date"},
        {"to": "2026-13-45"},
    ],
)
def test_usage_bad_parameters_are_400(tenant_admin, params):
    assert_error(tenant_admin.client.get("/api/usage/", params), 400, "validation_error")


# --- /api/usage/logs/ ---------------------------------------------------------------------------


def logs(persona: Persona, **params) -> dict:
    r = persona.client.get("/api/usage/logs/", params)
    assert r.status_code == 200, r.content
    return r.json()


def test_admin_sees_every_ledger_row_of_the_tenant(traffic, tenant_admin):
    body = logs(tenant_admin)

    acme = [row for row in traffic if row["tenant"] == tenant_admin.tenant.pk]
    assert body["count"] == len(acme) + 1  # plus the refused call
    by_id = {row["request_id"]: row for row in body["results"]}
    for call in acme:
        row = by_id[call["request_id"]]
        assert (row["user"], row["task"], row["model_name"]) == (call["user"], call["task"], call["model"])
        assert (row["tokens_in"], row["tokens_out"], row["cost_micro_usd"]) == (
            call["tokens_in"], call["tokens_out"], call["cost"])
        assert row["status"] == "SUCCESS" and row["enforcement_mode"] == "HARD"
    [refused] = [row for row in body["results"] if row["status"] == "REFUSED"]
    assert (refused["user"], refused["error_code"], refused["tokens_in"]) == ("acme-member", "model_class_not_allowed",
                                                                            0)
    assert "messages" not in refused and "content" not in refused  # never prompt text
    # Newest first.
    times = [row["admitted_at"] for row in body["results"]]
    assert times == sorted(times, reverse=True)


def test_member_sees_only_their_own_ledger_rows(traffic, member):
    body = logs(member)

    assert body["count"] == 3  # two calls and one refusal
    assert {row["user"] for row in body["results"]} == {"acme-member"}
    mine = {row["request_id"] for row in traffic if row["user"] == "acme-member"}
    assert mine <= {row["request_id"] for row in body["results"]}


def test_outsider_never_sees_the_tenants_ledger_rows(traffic, outsider):
    body = logs(outsider)

    acme = {row["request_id"] for row in traffic if row["tenant"] != outsider.tenant.pk}
    assert body["count"] == 1
    assert {row["user"] for row in body["results"]} == {"globex-admin"}
    assert not acme & {row["request_id"] for row in body["results"]}


def test_ledger_rows_are_paginated(tenant_admin, monkeypatch):
    for i in range(3):
        assert chat(tenant_admin, content=f"call {i}").status_code == 200
    monkeypatch.setattr(PageNumberPagination, "page_size", 2)  # read at import from PAGE_SIZE

    first = logs(tenant_admin)
    second = logs(tenant_admin, page=2)

    assert first["count"] == second["count"] == 3
    assert len(first["results"]) == 2 and len(second["results"]) == 1
    assert first["next"] and first["previous"] is None and second["next"] is None
    ids = {row["request_id"] for row in first["results"] + second["results"]}
    assert ids == set(UsageLog.objects.values_list("request_id", flat=True))
    assert_error(tenant_admin.client.get("/api/usage/logs/", {"page": 9}), 404, "not_found")


# --- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ENDPOINTS)
def test_unauthenticated_is_401(tenant_admin, url):
    client = tenant_admin.client
    client.credentials()

    assert_error(client.get(url), 401, "not_authenticated")


@pytest.mark.parametrize("url", ENDPOINTS)
def test_garbage_token_is_401(tenant_admin, url):
    client = tenant_admin.client
    client.credentials(HTTP_AUTHORIZATION="Bearer garbage.token.here")

    assert_error(client.get(url), 401, "token_not_valid")
