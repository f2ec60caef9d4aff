"""The metering operations commands: set_policy, show_policy, expire_reservations, reconcile_meters,
replay_usage_spool. Happy paths, --json, and every bad-input path exits non-zero."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import F
from django.utils import timezone

from catalog.models import Task
from metering import services, spool
from metering.management.commands.set_policy import Command as SetPolicy
from metering.models import PolicyRule, UsageLog, UsageMeter, UsageReservation
from metering.policy import policy_cache_invalidate, policy_evaluate
from tenants.selectors import identity_resolve
from tests.conftest import make_tenant


def run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def run_json(*args) -> dict:
    return json.loads(run(*args, "--json"))  # exactly one JSON document


def context_for(user):
    tenant = user.tenant
    return identity_resolve(user_id=user.pk, tenant_id=tenant.pk, ati_id=tenant.signup_ati_token_id)


def evaluate(user, task_code="LLM2_DRAFT", now=None, **kwargs):
    kwargs.setdefault("tokens_in", 100)
    kwargs.setdefault("requested_max_tokens_out", 200)
    return policy_evaluate(context=context_for(user), task_code=task_code, now=now or timezone.now(), **kwargs)


def admit(user, request_id: str, now=None, **kwargs):
    now = now or timezone.now()
    decision = evaluate(user, now=now, **kwargs)
    assert decision.allowed, decision.code
    admission = services.usage_admit(tenant_id=user.tenant_id, user_id=user.pk, decision=decision,
                                     request_id=request_id, mode="HARD", now=now)
    return decision, admission


def success(decision, tokens_out: int = 150) -> services.CallOutcome:
    model = decision.candidates[0]
    return services.CallOutcome(
        status=UsageLog.Status.SUCCESS, provider=model.provider, model_name=model.model_name,
        model_class=model.model_class, tokens_in=decision.tokens_in, tokens_out=tokens_out,
        cost_micro_usd=model.cost_micro_usd(tokens_in=decision.tokens_in, tokens_out=tokens_out), api_calls=1,
        latency_ms=5,
    )


def set_policy(*args: str, **kwargs) -> str:
    return run("set_policy", *args, **kwargs)


# --- set_policy ----------------------------------------------------------------------------------


def test_set_policy_global(catalog, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        out = set_policy("--scope", "global", "--key", "tenant_tpm", "--value", "1000")
    rule = PolicyRule.objects.get(scope="GLOBAL", key="tenant_tpm")
    assert rule.value == 1000 and rule.task is None and not rule.seeded
    assert f"Rule #{rule.pk}" in out and "tenant_tpm = 1000" in out and "all tasks" in out


def test_set_policy_plan_with_task_updates_in_place_and_takes_effect(tenant_admin, django_capture_on_commit_callbacks):
    user = tenant_admin.user
    assert evaluate(user).limits["max_tokens_out"].value == 4_096  # seeded, and now cached
    with django_capture_on_commit_callbacks(execute=True):
        body = run_json("set_policy", "--scope", "plan", "--plan", "PRO", "--task", "LLM2_DRAFT",
                        "--key", "max_tokens_out", "--value", "2048")
    assert body["scope"] == "PLAN" and body["subject"] == "PRO" and body["task"] == "LLM2_DRAFT"
    assert body["value"] == 2048
    # The command's write invalidates the cached rules on commit: the next evaluation sees it.
    assert evaluate(user).limits["max_tokens_out"].value == 2_048
    assert evaluate(user, "LLM1_PRIOR_ART").limits["max_tokens_out"].value == 4_096
    with django_capture_on_commit_callbacks(execute=True):
        again = run_json("set_policy", "--scope", "PLAN", "--plan", "PRO", "--task", "LLM2_DRAFT",
                         "--key", "max_tokens_out", "--value", "1500")
    assert again["id"] == body["id"]
    assert PolicyRule.objects.filter(scope="PLAN", key="max_tokens_out", task__code="LLM2_DRAFT").count() == 1
    assert evaluate(user).limits["max_tokens_out"].value == 1_500


def test_set_policy_overrides_a_seeded_rule_and_marks_it_the_operators(catalog):
    seeded = PolicyRule.objects.get(scope="PLAN", plan__code="FREE", key="max_tokens_out", task=None,
                                    when_quota_key="")
    assert seeded.seeded
    set_policy("--scope", "plan", "--plan", "FREE", "--key", "max_tokens_out", "--value", "2000")
    seeded.refresh_from_db()
    assert seeded.value == 2000 and not seeded.seeded


def test_set_policy_tenant_usd_with_time_window(tenant_admin):
    tenant = tenant_admin.tenant
    body = run_json("set_policy", "--scope", "tenant", "--tenant", tenant.slug, "--key", "tenant_cost_per_month_usd",
                    "--value", "12.50", "--weekdays", "0,1,2,3,4", "--start", "09:00", "--end", "17:30",
                    "--timezone", "Europe/Paris")
    rule = PolicyRule.objects.get(pk=body["id"])
    assert (rule.scope, rule.tenant, rule.value) == ("TENANT", tenant, "12.5")
    assert rule.weekdays == [0, 1, 2, 3, 4] and rule.timezone == "Europe/Paris"
    assert rule.start_time.strftime("%H:%M") == "09:00" and rule.end_time.strftime("%H:%M") == "17:30"
    text = set_policy("--scope", "tenant", "--tenant", tenant.slug, "--key", "max_tokens_out", "--value", "256",
                      "--start", "22:00", "--end", "06:00")
    assert "window every day 22:00-06:00 UTC" in text


def test_set_policy_user_model_classes_with_condition(member):
    out = set_policy("--scope", "user", "--user", member.user.username, "--task", "LLM2_DRAFT",
                     "--key", "allowed_model_classes", "--value", "PRO_M", "--when-quota", "tenant_tokens_per_month",
                     "--when-percent", "90")
    rule = PolicyRule.objects.get(scope="USER", user=member.user)
    assert rule.value == ["PRO_M"] and rule.task.code == "LLM2_DRAFT"
    assert (rule.when_quota_key, rule.when_usage_percent_gte) == ("tenant_tokens_per_month", 90)
    assert "when tenant_tokens_per_month >= 90%" in out
    run("set_policy", "--scope", "user", "--user", member.user.username, "--key", "allowed_model_classes",
        "--value", "BASE_S, BASE_M")
    assert PolicyRule.objects.get(scope="USER", user=member.user, task=None).value == ["BASE_S", "BASE_M"]


BAD_INPUT = [
    (["--scope", "global", "--key", "max_tokens", "--value", "1"], "Unknown policy key 'max_tokens'"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "abc"], "whole number"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1.5"], "whole number"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "true"], "whole number"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "-3"], "cannot be negative"),
    (["--scope", "global", "--key", "tenant_cost_per_month_usd", "--value", "1.1234567"], "6 decimal places"),
    (["--scope", "global", "--key", "tenant_cost_per_month_usd", "--value", "lots"], "not an amount of USD"),
    (["--scope", "global", "--key", "allowed_model_classes", "--value", "BASE_S,GOLD"], "Unknown model classes"),
    (["--scope", "plan", "--plan", "GOLD", "--key", "max_tokens_out", "--value", "1"], "Unknown plan 'GOLD'"),
    (["--scope", "tenant", "--tenant", "nope", "--key", "max_tokens_out", "--value", "1"], "Unknown tenant 'nope'"),
    (["--scope", "user", "--user", "nobody", "--key", "max_tokens_out", "--value", "1"], "Unknown user 'nobody'"),
    (["--scope", "global", "--task", "LLM9", "--key", "max_tokens_out", "--value", "1"], "Unknown task 'LLM9'"),
    (["--scope", "plan", "--key", "max_tokens_out", "--value", "1"], "--scope plan needs --plan"),
    (["--scope", "tenant", "--key", "max_tokens_out", "--value", "1"], "--scope tenant needs --tenant"),
    (["--scope", "user", "--key", "max_tokens_out", "--value", "1"], "--scope user needs --user"),
    (["--scope", "global", "--plan", "PRO", "--key", "max_tokens_out", "--value", "1"],
     "--plan does not go with --scope global"),
    (["--scope", "plan", "--plan", "PRO", "--tenant", "acme-patents", "--key", "max_tokens_out", "--value", "1"],
     "--tenant does not go with --scope plan"),
    (["--scope", "galaxy", "--key", "max_tokens_out", "--value", "1"], "invalid choice"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--weekdays", "mon"], "--weekdays"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--weekdays", "1,7"], "--weekdays"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--start", "25:00"], "HH:MM"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--start", "9am"], "HH:MM"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--start", "09:00", "--end", "09:00"],
     "never apply"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--timezone", "Mars/Base"],
     "Unknown time zone"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--when-quota", "tenant_tokens_per_month"],
     "go together"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--when-percent", "90"], "go together"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--when-quota", "max_tokens_in",
      "--when-percent", "90"], "not a quota key"),
    (["--scope", "global", "--key", "max_tokens_out", "--value", "1", "--when-quota", "tenant_tokens_per_month",
      "--when-percent", "0"], "percentage between 1 and 100"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_set_policy_bad_input(tenant_admin, args, message):
    before = list(PolicyRule.objects.order_by("pk").values())
    with pytest.raises(CommandError) as refused:
        set_policy(*args)
    assert message in str(refused.value)
    assert list(PolicyRule.objects.order_by("pk").values()) == before  # nothing written or changed


@pytest.mark.django_db(transaction=True)  # run_from_argv closes connections, as a real command run does
def test_set_policy_bad_input_exits_non_zero(catalog, capsys):
    with pytest.raises(SystemExit) as exited:
        SetPolicy().run_from_argv(["manage.py", "set_policy", "--scope", "global", "--key", "nope", "--value", "1"])
    assert exited.value.code != 0
    assert "Unknown policy key 'nope'" in capsys.readouterr().err
    assert not PolicyRule.objects.filter(key="nope").exists()


# --- show_policy ---------------------------------------------------------------------------------


def test_show_policy_lists_limits_per_task_with_sources(tenant_admin):
    tenant = tenant_admin.tenant
    seeded = PolicyRule.objects.get(scope="PLAN", plan__code="PRO", key="max_tokens_out", when_quota_key="")
    out = run("show_policy", "--tenant", tenant.slug)
    assert f"acme-admin of tenant {tenant.slug} (plan PRO)" in out
    for code in ("LLM1_PRIOR_ART", "LLM2_DRAFT", "LLM3_DIAGRAM"):
        assert code in out
    assert "KEY" in out and "SOURCE" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("max_tokens_out"))
    assert "4096 tokens" in line and f"rule #{seeded.pk} (plan PRO)" in line
    assert "250 USD" in out  # tenant_cost_per_month_usd, shown in dollars
    assert "retrieval_top_k" in out and "agent_max_steps" in out

    set_policy("--scope", "tenant", "--tenant", tenant.slug, "--task", "LLM2_DRAFT", "--key", "max_tokens_out",
               "--value", "2048")
    policy_cache_invalidate()  # the command's on-commit invalidation (a test transaction never commits)
    rule = PolicyRule.objects.get(scope="TENANT", key="max_tokens_out")
    body = run_json("show_policy", "--tenant", tenant.slug, "--task", "LLM2_DRAFT")
    assert list(body["tasks"]) == ["LLM2_DRAFT"]
    rows = {(r["key"], r["applies_to"]): r for r in body["tasks"]["LLM2_DRAFT"]["limits"]}
    assert rows[("max_tokens_out", "LLM2_DRAFT")]["value"] == 2048
    assert rows[("max_tokens_out", "LLM2_DRAFT")]["source"] == f"rule #{rule.pk} (tenant {tenant.slug})"
    assert rows[("max_concurrent", "LLM2_DRAFT")]["value"] == 2
    assert rows[("tenant_tokens_per_month", "all tasks")]["value"] == 5_000_000
    assert body["tasks"]["LLM2_DRAFT"]["plan_model_classes"] == ["PRO_M", "PRO_L"]


def test_show_policy_for_a_user(member):
    tenant, user = member.tenant, member.user
    set_policy("--scope", "user", "--user", user.username, "--key", "max_tokens_in", "--value", "777")
    policy_cache_invalidate()
    out = run("show_policy", "--tenant", tenant.slug, "--user", user.username, "--task", "LLM1_PRIOR_ART")
    line = next(x for x in out.splitlines() if x.strip().startswith("max_tokens_in"))
    assert "777 tokens" in line and "(user acme-member)" in line
    assert "LLM2_DRAFT" not in out
    # The admin does not get the member's rule.
    admin_out = run("show_policy", "--tenant", tenant.slug, "--task", "LLM1_PRIOR_ART")
    assert "777 tokens" not in admin_out and "32000 tokens" in admin_out


def test_show_policy_shows_tasks_outside_the_plan(catalog):
    tenant, _ = make_tenant("Free Co", "free-admin", plan="FREE")
    out = run("show_policy", "--tenant", tenant.slug)
    assert "LLM2_DRAFT: not in the FREE plan." in out
    assert not run_json("show_policy", "--tenant", tenant.slug)["tasks"]["LLM2_DRAFT"]["in_plan"]


@pytest.mark.parametrize("args, message", [
    (["--tenant", "nope"], "Unknown tenant 'nope'"),
    (["--tenant", "acme-patents", "--user", "nobody"], "Unknown user 'nobody'"),
    (["--tenant", "acme-patents", "--user", "globex-admin"], "does not belong to tenant acme-patents"),
    (["--tenant", "acme-patents", "--task", "LLM9"], "Unknown task 'LLM9'"),
])
def test_show_policy_bad_input(tenant_admin, outsider, args, message):
    with pytest.raises(CommandError, match=message):
        run("show_policy", *args)


# --- expire_reservations -----------------------------------------------------------------------


def test_expire_reservations_releases_an_expired_reservation(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    past = timezone.now() - timedelta(hours=1)
    _, stale = admit(user, "req-stale", now=past)
    _, running = admit(user, "req-running")
    stale_meters = list(UsageMeter.objects.filter(holds__reservation_id=stale.reservation_id).distinct())
    assert stale_meters and all(m.reserved > 0 for m in stale_meters)

    out = run("expire_reservations")
    assert "Released 1 expired reservation." in out
    assert UsageReservation.objects.get(pk=stale.reservation_id).status == UsageReservation.Status.EXPIRED
    # Expiry charges nothing and writes no ledger row: the call is in the ledger once, when it reports.
    assert not UsageLog.objects.filter(request_id="req-stale").exists()
    # The live lease keeps its holds; nothing else is reserved.
    assert UsageReservation.objects.get(pk=running.reservation_id).status == UsageReservation.Status.ACTIVE
    live = {h.meter_id: h.amount for h in UsageReservation.objects.get(pk=running.reservation_id).holds.all()}
    for meter in UsageMeter.objects.filter(tenant=tenant):
        assert meter.reserved == live.get(meter.pk, 0), meter
    assert services.meters_reconcile() == []
    # Once released, it stays released: a second run finds nothing.
    assert "Released 0 expired reservations." in run("expire_reservations")
    # The call was still running: when it settles late it is charged what it used (never nothing),
    # flagged in the ledger; its holds are not released twice. Settling again changes nothing.
    used_before = {m.pk: m.used for m in stale_meters}
    late = services.usage_settle(reservation_id=stale.reservation_id, outcome=services.CallOutcome(
        status=UsageLog.Status.SUCCESS, tokens_in=100, tokens_out=100, api_calls=1))
    assert late is not None and late.settled_late
    row = UsageLog.objects.get(request_id="req-stale")
    assert (row.status, row.tokens_in + row.tokens_out, row.settled_late) == (UsageLog.Status.SUCCESS, 200, True)
    for meter in UsageMeter.objects.filter(pk__in=used_before):
        if meter.metric == "TOKENS":
            assert meter.used == used_before[meter.pk] + 200
    assert services.usage_settle(reservation_id=stale.reservation_id, outcome=services.CallOutcome(
        status=UsageLog.Status.SUCCESS, tokens_in=100, tokens_out=100)) is None
    assert UsageLog.objects.filter(request_id="req-stale").count() == 1
    assert run_json("expire_reservations") == {"released": 0}
    services.usage_settle(reservation_id=running.reservation_id,
                          outcome=success(evaluate(user)))
    assert UsageMeter.objects.filter(tenant=tenant, reserved__gt=0).count() == 0
    assert services.meters_reconcile() == []


# --- reconcile_meters ----------------------------------------------------------------------------


def test_reconcile_meters_reports_and_fixes_drift(tenant_admin):
    user = tenant_admin.user
    decision, admission = admit(user, "req-1")
    services.usage_settle(reservation_id=admission.reservation_id, outcome=success(decision))
    assert "0 meters drifted" in run("reconcile_meters")

    meter = UsageMeter.objects.filter(holds__reservation_id=admission.reservation_id, metric="TOKENS").first()
    correct = meter.used
    UsageMeter.objects.filter(pk=meter.pk).update(used=F("used") + 7, reserved=3)
    out = run("reconcile_meters")  # reports, exits normally, changes nothing
    assert f"meter {meter.pk} (TOKENS/" in out
    assert f"used {correct + 7} expected {correct}" in out and "reserved 3 expected 0" in out
    assert "1 meter drifted" in out
    meter.refresh_from_db()
    assert (meter.used, meter.reserved) == (correct + 7, 3)
    body = run_json("reconcile_meters")
    assert body["drifted"] == 1 and body["drifts"][0]["meter_id"] == meter.pk and not body["fixed"]

    out = run("reconcile_meters", "--fix")
    assert "1 meter drifted; fixed 1" in out
    meter.refresh_from_db()
    assert (meter.used, meter.reserved) == (correct, 0)
    assert services.meters_reconcile() == []
    assert "0 meters drifted" in run("reconcile_meters")


# --- replay_usage_spool --------------------------------------------------------------------------


@pytest.fixture
def spool_dir(settings, tmp_path):
    settings.METERING_SPOOL_DIR = tmp_path / "spool"
    settings.METERING_SPOOL_REDIS_URL = ""  # the file spool (embedded); Redis: tests/metering/test_spool.py
    return settings.METERING_SPOOL_DIR


def _spool(user, request_id: str, decision, outcome, now):
    task = Task.objects.get(code=decision.task.code)
    return spool.spool_write(
        request_id=request_id, tenant_id=user.tenant_id, user_id=user.pk, task_id=task.pk,
        feature_code=decision.task.feature_code, mode="SHADOW", admitted_at=now, holds=decision.holds,
        outcome=outcome,
    )


def test_replay_usage_spool_records_a_spooled_call_exactly_once(tenant_admin, spool_dir):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    now = timezone.now()
    decision = evaluate(user, now=now)
    outcome = success(decision, tokens_out=120)
    path = _spool(user, "req-spooled", decision, outcome, now)
    record = path.read_text()
    assert UsageLog.objects.count() == 0

    assert "Recorded 1 spooled call." in run("replay_usage_spool")
    log = UsageLog.objects.get(request_id="req-spooled")
    assert (log.tokens_in, log.tokens_out, log.cost_micro_usd) == (100, 120, outcome.cost_micro_usd)
    assert log.status == UsageLog.Status.SUCCESS and log.enforcement_mode == "SHADOW"
    tokens = UsageMeter.objects.get(tenant=tenant, user=None, task=None, metric="TOKENS", window="MONTH")
    assert (tokens.used, tokens.reserved) == (220, 0)
    assert not list(spool_dir.glob("*.json"))
    assert services.meters_reconcile() == []

    assert "Recorded 0 spooled calls." in run("replay_usage_spool")
    # A crash between commit and delete leaves the file behind: replaying it again changes nothing.
    path.write_text(record)
    assert run_json("replay_usage_spool") == {"recorded": 0, "pending": 0}
    assert UsageLog.objects.filter(request_id="req-spooled").count() == 1
    tokens.refresh_from_db()
    assert tokens.used == 220
    assert services.meters_reconcile() == []


def test_replay_settles_a_call_admitted_before_the_database_failed(tenant_admin, spool_dir):
    """Admitted while the database was up; settlement failed and the usage was spooled. The replay
    settles that reservation (holds become the actual usage) rather than dropping the record."""
    user, tenant = tenant_admin.user, tenant_admin.tenant
    now = timezone.now()
    decision, admission = admit(user, "req-admitted", now=now)
    outcome = success(decision, tokens_out=50)
    _spool(user, "req-admitted", decision, outcome, now)

    assert "Recorded 1 spooled call." in run("replay_usage_spool")
    assert UsageReservation.objects.get(pk=admission.reservation_id).status == UsageReservation.Status.COMPLETED
    log = UsageLog.objects.get(request_id="req-admitted")
    assert (log.tokens_in, log.tokens_out) == (100, 50)
    assert not UsageMeter.objects.filter(tenant=tenant, reserved__gt=0).exists()
    tokens = UsageMeter.objects.get(tenant=tenant, user=None, task=None, metric="TOKENS", window="MONTH")
    assert tokens.used == 150
    assert services.meters_reconcile() == []
    assert "Recorded 0 spooled calls." in run("replay_usage_spool")
    # Expiry later finds nothing to release.
    assert services.reservations_expire(now=now + timedelta(hours=1)) == 0
    tokens.refresh_from_db()
    assert tokens.used == 150


def test_admission_survives_stale_cached_meter_ids(tenant_admin):
    """Meters deleted under the per-process id cache: admission notices, rolls back and retries."""
    from django.utils import timezone

    from metering.models import UsageMeter
    from metering.policy import policy_evaluate
    from metering.services import CallOutcome, usage_admit, usage_settle
    from tenants.selectors import identity_resolve

    user = tenant_admin.user
    context = identity_resolve(user_id=user.pk, tenant_id=user.tenant_id,
                               ati_id=tenant_admin.tenant.signup_ati_token_id)

    def one_call():
        now = timezone.now()
        decision = policy_evaluate(context=context, task_code="LLM2_DRAFT", tokens_in=10, now=now)
        admission = usage_admit(tenant_id=context.tenant_id, user_id=context.user_id, decision=decision,
                                request_id=f"req-{now.timestamp()}", mode="HARD", now=now)
        usage_settle(reservation_id=admission.reservation_id,
                     outcome=CallOutcome(status="SUCCESS", tokens_in=10, tokens_out=5, api_calls=1))

    one_call()
    UsageMeter.objects.all().delete()  # the cache still holds their ids
    one_call()
    # The meter made again starts from this month's ledger (the first call) and counts the second.
    assert UsageMeter.objects.filter(metric="TOKENS", window="MONTH", user=None, task=None).get().used == 30
    assert services.meters_reconcile() == []
