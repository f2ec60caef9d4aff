"""A meter that appears mid-period starts from what the ledger already holds for its subject and
period (gateway issue 12, item 1; metering/meter_start.py), as a tenant sees it: calls through
/v1/{TASK}/chat/completions, a rule written with `set_policy` (or a plan change), then /api/quota/
and the next call. The same on SQLite (Python holds) and PostgreSQL (the SQL functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import F, Sum
from django.utils import timezone

from catalog.models import Task
from metering import spool
from metering.models import UsageLog
from metering.policy import policy_evaluate
from metering.services import CallOutcome, meters_reconcile
from tenants.selectors import identity_resolve
from tenants.services import ati_token_retier
from tests.conftest import Persona, assert_error

pytestmark = pytest.mark.django_db(transaction=True)


def chat(persona: Persona, task: str = "LLM2_DRAFT") -> int:
    """One metered call; the tokens it was charged."""
    r = persona.client.post(f"/v1/{task}/chat/completions",
                            {"model": "auto", "messages": [{"role": "user", "content": "Claim a folding hinge"}],
                             "max_tokens": 60}, format="json")
    assert r.status_code == 200, r.content
    return r.json()["usage"]["total_tokens"]


def quota(persona: Persona) -> dict[tuple[str, str | None], dict]:
    r = persona.client.get("/api/quota/")
    assert r.status_code == 200, r.content
    return {(row["key"], row["task"]): row for row in r.json()["meters"]}


def set_policy(*args: str) -> None:
    call_command("set_policy", *args, stdout=StringIO())


def ledger_tokens(tenant, since: datetime, *, task: str | None = None, user=None) -> int:
    """The ledger's own answer: tokens in + out of the tenant's calls admitted since `since`."""
    rows = UsageLog.objects.filter(tenant=tenant, admitted_at__gte=since)
    if task is not None:
        rows = rows.filter(task__code=task)
    if user is not None:
        rows = rows.filter(user=user)
    return rows.aggregate(total=Sum(F("tokens_in") + F("tokens_out")))["total"] or 0


def month_start() -> datetime:
    return timezone.now().astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def day_start() -> datetime:
    return timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def test_a_tenant_rule_for_a_task_starts_from_this_months_ledger(tenant_admin):
    tenant = tenant_admin.tenant
    drafted = chat(tenant_admin) + chat(tenant_admin)
    chat(tenant_admin, "LLM1_PRIOR_ART")  # another task's tokens

    set_policy("--scope", "tenant", "--tenant", tenant.slug, "--task", "LLM2_DRAFT",
               "--key", "tenant_tokens_per_month", "--value", "1000000")

    row = quota(tenant_admin)[("tenant_tokens_per_month", "LLM2_DRAFT")]
    assert row["used"] == drafted == ledger_tokens(tenant, month_start(), task="LLM2_DRAFT")
    assert row["remaining"] == 1_000_000 - drafted
    # The first call after the rule creates the meter from there and adds to it.
    third = chat(tenant_admin)
    assert quota(tenant_admin)[("tenant_tokens_per_month", "LLM2_DRAFT")]["used"] == drafted + third
    assert meters_reconcile() == []


def test_a_user_rule_starts_from_that_users_own_ledger(tenant_admin, member):
    admin_tokens = chat(tenant_admin)
    member_tokens = chat(member) + chat(member, "LLM3_DIAGRAM")

    set_policy("--scope", "user", "--user", member.user.username, "--key", "user_tokens_per_day", "--value", "100000")

    assert quota(member)[("user_tokens_per_day", None)]["used"] == member_tokens
    assert ledger_tokens(member.tenant, day_start(), user=member.user) == member_tokens
    assert ("user_tokens_per_day", None) not in quota(tenant_admin)  # the member's rule only
    assert admin_tokens > 0
    chat(member)
    assert meters_reconcile() == []


def test_a_day_rule_counts_today_and_a_month_rule_the_month(tenant_admin, settings, tmp_path):
    """Yesterday's usage (recorded by the spool's replay, as after an outage) is in the month's ledger,
    or last month's on the 1st: never in today's."""
    settings.METERING_SPOOL_DIR, settings.METERING_SPOOL_REDIS_URL = tmp_path / "spool", ""
    user, tenant = tenant_admin.user, tenant_admin.tenant
    yesterday = timezone.now() - timedelta(days=1)
    context = identity_resolve(user_id=user.pk, tenant_id=tenant.pk, ati_id=tenant.signup_ati_token_id)
    decision = policy_evaluate(context=context, task_code="LLM2_DRAFT", tokens_in=100, now=yesterday)
    spool.spool_write(request_id="req-yesterday", tenant_id=tenant.pk, user_id=user.pk,
                      task_id=Task.objects.get(code="LLM2_DRAFT").pk, feature_code=decision.task.feature_code,
                      mode="HARD", admitted_at=yesterday, holds=decision.holds,
                      outcome=CallOutcome(status="SUCCESS", tokens_in=100, tokens_out=400, api_calls=1))
    call_command("replay_usage_spool", stdout=StringIO())
    today = chat(tenant_admin) + chat(tenant_admin)

    for key in ("tenant_tokens_per_day", "tenant_tokens_per_month"):
        set_policy("--scope", "tenant", "--tenant", tenant.slug, "--task", "LLM2_DRAFT", "--key", key,
                   "--value", "1000000")

    rows = quota(tenant_admin)
    assert rows[("tenant_tokens_per_day", "LLM2_DRAFT")]["used"] == today
    in_month = yesterday.astimezone(UTC).month == timezone.now().astimezone(UTC).month
    assert rows[("tenant_tokens_per_month", "LLM2_DRAFT")]["used"] == today + (500 if in_month else 0) \
        == ledger_tokens(tenant, month_start(), task="LLM2_DRAFT")
    chat(tenant_admin)
    assert meters_reconcile() == []


def test_a_plan_change_that_brings_a_new_key_starts_from_this_months_ledger(tenant_admin):
    tenant = tenant_admin.tenant
    set_policy("--scope", "plan", "--plan", "ENTERPRISE", "--task", "LLM2_DRAFT",
               "--key", "tenant_tokens_per_month", "--value", "40000000")  # no such rule on PRO
    drafted = chat(tenant_admin) + chat(tenant_admin)
    assert ("tenant_tokens_per_month", "LLM2_DRAFT") not in quota(tenant_admin)

    ati_token_retier(ati_id=tenant.signup_ati_token_id, plan_code="ENTERPRISE")

    row = quota(tenant_admin)[("tenant_tokens_per_month", "LLM2_DRAFT")]
    assert (row["used"], row["limit"]) == (drafted, 40_000_000)
    assert "plan ENTERPRISE" in row["source"]
    assert drafted == ledger_tokens(tenant, month_start(), task="LLM2_DRAFT")
    after = chat(tenant_admin)
    assert quota(tenant_admin)[("tenant_tokens_per_month", "LLM2_DRAFT")]["used"] == drafted + after
    assert meters_reconcile() == []


def test_a_limit_set_below_this_months_usage_refuses_the_next_call_in_hard_mode(tenant_admin):
    tenant = tenant_admin.tenant
    used = chat(tenant_admin) + chat(tenant_admin)
    set_policy("--scope", "tenant", "--tenant", tenant.slug, "--task", "LLM2_DRAFT",
               "--key", "tenant_tokens_per_month", "--value", str(used - 1))

    r = tenant_admin.client.post("/v1/LLM2_DRAFT/chat/completions",
                                 {"model": "auto", "messages": [{"role": "user", "content": "one more"}],
                                  "max_tokens": 60}, format="json")
    body = assert_error(r, 429, "quota_exceeded")
    assert "tenant_tokens_per_month" in body["error"]["message"]
    row = quota(tenant_admin)[("tenant_tokens_per_month", "LLM2_DRAFT")]
    assert (row["used"], row["reserved"], row["remaining"]) == (used, 0, 0)
    chat(tenant_admin, "LLM1_PRIOR_ART")  # the rule limits LLM2_DRAFT only
    assert meters_reconcile() == []
