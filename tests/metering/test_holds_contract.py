"""One contract, two implementations (DESIGN.md §3; metering/services/backends.py `HoldsBackend`).

`HoldsContract` is one suite of tests written against the public services only (`usage_admit`,
`usage_settle`, `reservations_expire`, `reservation_renew`, and the spool's `spool_write` /
`spool_replay`), and each implementation runs all of it, the shape of zulip's
zerver/tests/test_rate_limiter.py (one base class of tests, one subclass per rate-limiter backend):

- `TestPythonHolds`: the Python implementation on the run's database: SQLite (the embedded default)
  or PostgreSQL, where `METERING_HOLDS_BACKEND="python"` forces it;
- `TestPostgresHolds`: the PostgreSQL functions (metering/pg_functions.py); PostgreSQL only.

After every scenario reconciliation finds zero drift (the `_zero_drift` fixture).
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from catalog.models import Task
from gateway_project.errors import TooManyRequests
from metering import selectors, services, spool
from metering.alerts.models import Notification, QuotaAlert
from metering.models import UsageDaily, UsageHold, UsageLog, UsageMeter, UsageReservation
from metering.policy import EnforcementDecision, HoldSpec, policy_cache_invalidate, policy_evaluate
from metering.policy_keys import POLICY_KEYS
from metering.services.backends import holds_backend
from tenants import services as tenant_services
from tenants.selectors import api_key_resolve, identity_resolve
from tests.conftest import require_postgres

LEASE = 120  # RESERVATION_LEASE_SECONDS, set by the fixture below

# A fixed mid-month moment for the scenarios that need earlier days of the same month and of the
# month before (every service takes `now`).
NOW = datetime(2026, 3, 15, 12, 0, 30, tzinfo=UTC)
EARLIER_THIS_MONTH = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
LAST_MONTH = datetime(2026, 2, 27, 9, 0, tzinfo=UTC)


# --- helpers: the public services, as the gateway calls them ------------------------------------


def _context(user):
    return identity_resolve(user_id=user.pk, tenant_id=user.tenant_id, ati_id=user.tenant.signup_ati_token_id)


def evaluate(user, *, task: str = "LLM2_DRAFT", now: datetime | None = None, mode: str = "HARD",
             tokens_in: int = 100, max_tokens_out: int = 200) -> EnforcementDecision:
    decision = policy_evaluate(context=_context(user), task_code=task, tokens_in=tokens_in,
                               requested_max_tokens_out=max_tokens_out, now=now or timezone.now(), mode=mode)
    assert decision.allowed, (decision.code, decision.message)
    return decision


def admit(user, request_id: str, *, now: datetime | None = None, mode: str = "HARD", task: str = "LLM2_DRAFT",
          key: str | None = None) -> tuple[EnforcementDecision, services.Admission]:
    now = now or timezone.now()
    decision = evaluate(user, task=task, now=now, mode=mode)
    admission = services.usage_admit(tenant_id=user.tenant_id, user_id=user.pk, decision=decision,
                                     request_id=request_id, mode=mode, now=now, idempotency_key=key,
                                     fingerprint="body-1" if key else "")
    return decision, admission


def refused(user, request_id: str, code: str, **kwargs) -> TooManyRequests:
    with pytest.raises(TooManyRequests) as error:
        admit(user, request_id, **kwargs)
    assert error.value.code == code, error.value.message
    return error.value


def outcome(*, tokens_in: int = 100, tokens_out: int = 100, cost: int = 0, api_calls: int = 1,
            status: str = UsageLog.Status.SUCCESS, search_fees: int = 0) -> services.CallOutcome:
    return services.CallOutcome(status=status, provider="offline", model_name="offline-m", model_class="PRO_M",
                                tokens_in=tokens_in, tokens_out=tokens_out, cost_micro_usd=cost, api_calls=api_calls,
                                search_fees_micro_usd=search_fees)


def settle(admission: services.Admission, now: datetime | None = None, **kwargs) -> UsageLog | None:
    return services.usage_settle(reservation_id=admission.reservation_id, outcome=outcome(**kwargs), now=now)


def rule(key: str, value, *, tenant=None, user=None, task: str | None = None):
    scope = "USER" if user is not None else "TENANT"
    created = services.policy_rule_set(scope=scope, key=key, value=value, tenant=tenant, user=user,
                                       task=Task.objects.get(code=task) if task else None)
    policy_cache_invalidate()  # what the rule's on-commit hook does (a test's transaction never commits)
    return created


def hold(decision: EnforcementDecision, key: str, task: bool = False) -> HoldSpec:
    (found,) = [h for h in decision.holds if h.key == key and bool(h.task_id) == task]
    return found


def meter(tenant, metric: str, window: str, *, user=None, task: str | None = None,
          now: datetime | None = None) -> UsageMeter:
    from metering.periods import period_start

    return UsageMeter.objects.get(tenant=tenant, user=user, api_key=None,
                                  task=Task.objects.get(code=task) if task else None,
                                  metric=metric, window=window,
                                  period_start=period_start(window, now or timezone.now()))


def state() -> tuple:
    """Everything admission and settlement write."""
    return (list(UsageMeter.objects.order_by("pk").values_list("pk", "used", "reserved")),
            UsageReservation.objects.count(), UsageHold.objects.count(), UsageLog.objects.count(),
            QuotaAlert.objects.count())


def micro_usd(amount: int) -> str:
    return str(Decimal(amount) / 1_000_000)


def key_issue(tenant, *, name: str = "svc", limits: dict | None = None):
    return tenant_services.api_key_create(tenant=tenant, name=name, limits=limits)


def key_context(issued):
    """The identity a request with this API key gets (the key's own budget rides on it)."""
    cache.clear()  # a test's transaction never commits: what the key's on-commit invalidation does
    public_id, secret = issued.secret.removeprefix("gw_live_").split("_", 1)
    return api_key_resolve(public_id=public_id, secret=secret)


def evaluate_as(context, *, now: datetime, mode: str = "HARD") -> EnforcementDecision:
    decision = policy_evaluate(context=context, task_code="LLM2_DRAFT", tokens_in=100, requested_max_tokens_out=200,
                               now=now, mode=mode)
    assert decision.allowed, (decision.code, decision.message)
    return decision


def admit_as(context, request_id: str, *, now: datetime, mode: str = "HARD"):
    decision = evaluate_as(context, now=now, mode=mode)
    return decision, services.usage_admit(tenant_id=context.tenant_id, user_id=context.user_id, decision=decision,
                                          request_id=request_id, mode=mode, now=now,
                                          api_key_id=context.api_key_id)


# --- the suite ------------------------------------------------------------------------------------


class HoldsContract:
    backend: str

    @pytest.fixture(autouse=True)
    def _zero_drift(self, _backend, settings):
        settings.RESERVATION_LEASE_SECONDS = LEASE
        assert holds_backend().name == self.backend  # the implementation under test is the one that runs
        yield
        assert services.meters_reconcile() == []

    # every quota kind ----------------------------------------------------------------------------

    @pytest.mark.parametrize("key", ["tenant_tokens_per_day", "tenant_tokens_per_month", "user_tokens_per_day",
                                     "user_tokens_per_month", "tenant_cost_per_month_usd",
                                     "tenant_api_calls_per_month"])
    def test_each_quota_takes_up_to_its_limit_and_refuses_past_it_writing_nothing(self, tenant_admin, member,
                                                                                 key):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        # What one call holds of the key's metric (the quota may not be set yet: user_tokens_per_day).
        amount = next(h.amount for h in evaluate(user).holds if h.metric == POLICY_KEYS[key].metric)
        cost_key = key.endswith("_usd")
        rule(key, micro_usd(amount) if cost_key else amount,
             **({"user": user} if key.startswith("user_") else {"tenant": tenant}))

        decision, first = admit(user, "req-1")
        spec = hold(decision, key)
        assert (spec.limit, spec.amount) == (amount, amount)
        counted = UsageMeter.objects.get(holds__reservation_id=first.reservation_id, holds__policy_key=key)
        assert (counted.used, counted.reserved) == (0, amount)
        assert counted.user_id == (user.pk if key.startswith("user_") else None) and counted.task_id is None
        # The call used exactly its limit.
        metric = spec.metric
        settle(first, **{"TOKENS": {"tokens_in": 100, "tokens_out": amount - 100}, "COST": {"cost": amount},
                         "API_CALLS": {"api_calls": amount}}[metric])
        counted.refresh_from_db()
        assert (counted.used, counted.reserved) == (amount, 0)

        before = state()
        error = refused(user, "req-2", "quota_exceeded")
        assert key in error.message and error.retry_after >= 1
        assert state() == before  # HARD refused: no reservation, no hold, no counter moved
        assert not UsageReservation.objects.filter(request_id="req-2").exists()
        if key.startswith("user_"):
            admit(member.user, "req-member")  # another user's own meter is not that one

    # rates -----------------------------------------------------------------------------------------

    def test_requests_per_minute_of_the_tenant_and_of_a_user(self, tenant_admin, member):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        rule("tenant_rpm", 3, tenant=tenant)
        rule("user_rpm", 2, user=user)
        minute = NOW.replace(second=5)
        for n in (1, 2):
            settle(admit(user, f"req-{n}", now=minute + timedelta(seconds=n))[1], now=minute + timedelta(seconds=n))
        error = refused(user, "req-3", "rate_limited", now=minute + timedelta(seconds=3))
        assert 1 <= error.retry_after <= 60
        admit(member.user, "req-member", now=minute + timedelta(seconds=4))  # the user limit is the admin's
        refused(member.user, "req-member-2", "rate_limited", now=minute + timedelta(seconds=5))  # the tenant's: 3
        # The next minute is a new period.
        admit(user, "req-next-minute", now=minute + timedelta(minutes=1))
        rpm = meter(tenant, "REQUESTS", "MINUTE", now=minute)
        assert (rpm.used, rpm.reserved) == (2, 1)  # two settled (one request each), one in flight

    def test_tokens_per_minute(self, tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        amount = hold(evaluate(user), "tenant_tokens_per_day").amount
        rule("tenant_tpm", 2 * amount, tenant=tenant)
        rule("max_concurrent", 10, tenant=tenant, task="LLM2_DRAFT")  # the rate, not the slots, refuses
        admit(user, "req-1", now=NOW)
        admit(user, "req-2", now=NOW)
        refused(user, "req-3", "rate_limited", now=NOW)
        tpm = meter(tenant, "TOKENS", "MINUTE", now=NOW)
        assert (tpm.used, tpm.reserved) == (0, 2 * amount)

    # concurrency slots -----------------------------------------------------------------------------

    def test_concurrency_slots_are_taken_up_to_the_limit_and_freed_on_settlement(self, tenant_admin, member):
        user, tenant = tenant_admin.user, tenant_admin.tenant  # PRO: 2 calls of LLM2_DRAFT at once
        _, first = admit(user, "req-1")
        admit(user, "req-2")
        before = state()
        error = refused(user, "req-3", "concurrency_limit")
        assert error.retry_after == 1 and state() == before
        slots = meter(tenant, "CONCURRENT", "NONE", task="LLM2_DRAFT")
        assert (slots.used, slots.reserved) == (0, 2)
        admit(user, "req-other-task", task="LLM1_PRIOR_ART")  # another task's slots
        settle(first)
        slots.refresh_from_db()
        assert (slots.used, slots.reserved) == (0, 1)
        admit(user, "req-4")
        # A user's own limit, beside the tenant's.
        rule("max_concurrent", 10, tenant=tenant, task="LLM2_DRAFT")
        rule("user_max_concurrent", 1, user=member.user)
        admit(member.user, "req-member-1")
        refused(member.user, "req-member-2", "concurrency_limit")
        admit(user, "req-5")

    # several holds on one meter --------------------------------------------------------------------

    def test_several_reservations_hold_one_meter_at_once(self, tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        rule("max_concurrent", 10, tenant=tenant, task="LLM2_DRAFT")
        admitted = [admit(user, f"req-{n}") for n in range(4)]
        month = meter(tenant, "TOKENS", "MONTH")
        amounts = [hold(d, "tenant_tokens_per_month").amount for d, _ in admitted]
        assert (month.used, month.reserved) == (0, sum(amounts))
        open_, used = set(range(4)), 0
        for n, tokens_out in ((2, 40), (0, 250), (3, 1), (1, 90)):
            settle(admitted[n][1], tokens_out=tokens_out)
            open_.discard(n)
            used += 100 + tokens_out
            month.refresh_from_db()
            assert (month.used, month.reserved) == (used, sum(amounts[i] for i in open_))
        assert UsageLog.objects.count() == 4

    # HARD refuses, SHADOW and SOFT take and report ------------------------------------------------

    @pytest.mark.parametrize("mode", ["SHADOW", "SOFT"])
    def test_hard_refuses_writing_nothing_where_shadow_and_soft_take_the_hold_and_report(self, tenant_admin,
                                                                                         mode):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        rule("tenant_tokens_per_day", 50, tenant=tenant)  # below one call's input: nothing fits
        warmup, _ = admit(user, "req-warmup", mode="SHADOW")  # the meters exist
        before = state()
        refused(user, "req-hard", "quota_exceeded")
        assert state() == before

        decision, admission = admit(user, "req-taken", mode=mode)
        assert admission.would_refuse_code == "quota_exceeded"
        assert "tenant_tokens_per_day" in admission.would_refuse_message
        day = meter(tenant, "TOKENS", "DAY")
        amount = hold(decision, "tenant_tokens_per_day").amount
        assert day.reserved == amount + hold(warmup, "tenant_tokens_per_day").amount
        log = settle(admission, tokens_out=30)
        assert log.enforcement_mode == mode
        day.refresh_from_db()
        assert day.used == 130

    # thresholds ----------------------------------------------------------------------------------

    def test_quota_alerts_80_percent_once_and_100_percent_once(self, tenant_admin,
                                                               django_capture_on_commit_callbacks):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        rule("tenant_tokens_per_month", 10_000, tenant=tenant)

        def alerts() -> list[str]:
            month = meter(tenant, "TOKENS", "MONTH")
            return sorted(QuotaAlert.objects.filter(meter=month).values_list("kind", flat=True))

        for n, tokens_out, expected in ((1, 7_800, []),  # 79 %
                                        (2, 100, ["QUOTA_WARNING"]),  # 81 %
                                        (3, 100, ["QUOTA_WARNING"]),  # 83 %: no second warning
                                        (4, 1_600, ["QUOTA_EXCEEDED", "QUOTA_WARNING"])):  # 100 %
            with django_capture_on_commit_callbacks(execute=True):
                settle(admit(user, f"req-{n}")[1], tokens_out=tokens_out)
            assert alerts() == expected, n
            # Each new alert reached the tenant admin once, after commit.
            assert sorted(Notification.objects.filter(user=user).values_list("alert__kind", flat=True)) == expected
        # SOFT takes a call past the limit; no second "exceeded" alert for this meter and period.
        with django_capture_on_commit_callbacks(execute=True):
            settle(admit(user, "req-5", mode="SOFT")[1], tokens_out=10)
        assert alerts() == ["QUOTA_EXCEEDED", "QUOTA_WARNING"]
        assert sorted(Notification.objects.filter(user=user).values_list("alert__kind", flat=True)) == [
            "QUOTA_EXCEEDED", "QUOTA_WARNING"]
        alert = QuotaAlert.objects.get(kind="QUOTA_EXCEEDED")
        assert (alert.policy_key, alert.limit_value, alert.observed_value) == ("tenant_tokens_per_month", 10_000,
                                                                               10_000)
        # The day meter (500 000 on PRO) crossed nothing.
        assert not QuotaAlert.objects.filter(meter=meter(tenant, "TOKENS", "DAY")).exists()

    def test_concurrency_alert_at_90_percent_once(self, tenant_admin, django_capture_on_commit_callbacks):
        user, tenant = tenant_admin.user, tenant_admin.tenant  # PRO: 2 slots of LLM2_DRAFT
        _, first = admit(user, "req-1")
        assert not QuotaAlert.objects.exists()  # 50 %
        with django_capture_on_commit_callbacks(execute=True):
            admit(user, "req-2")  # 100 %
        (alert,) = QuotaAlert.objects.all()
        assert (alert.kind, alert.policy_key, alert.limit_value, alert.observed_value) == (
            "CONCURRENCY_LIMIT", "max_concurrent", 2, 2)
        assert alert.meter_id == meter(tenant, "CONCURRENT", "NONE", task="LLM2_DRAFT").pk
        assert Notification.objects.filter(alert=alert, user=user).count() == 1
        settle(first)
        with django_capture_on_commit_callbacks(execute=True):
            admit(user, "req-3")
        assert QuotaAlert.objects.count() == 1 and Notification.objects.count() == 1

    # idempotent settlement -----------------------------------------------------------------------

    def test_a_second_settlement_changes_nothing(self, tenant_admin):
        user = tenant_admin.user
        _, admission = admit(user, "req-1")
        log = settle(admission, tokens_out=42)
        assert log is not None and log.tokens_out == 42 and not log.settled_late
        before = state()
        assert settle(admission, tokens_out=999) is None
        assert state() == before
        assert UsageLog.objects.get(request_id="req-1").tokens_out == 42

    def test_settlement_returns_the_ledger_row_it_wrote_and_what_is_left(self, tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        rule("tenant_tokens_per_day", 5_000, tenant=tenant)
        _, other = admit(user, "req-other", now=NOW)  # holds 300 more while the first settles
        _, admission = admit(user, "req-1", now=NOW)
        returned = settle(admission, now=NOW + timedelta(seconds=2), tokens_out=58, cost=1_234, api_calls=2)
        stored = UsageLog.objects.get(request_id="req-1")
        fields = ("pk", "request_id", "reservation_id", "tenant_id", "user_id", "task_id", "feature_code", "provider",
                  "model_name", "model_class", "tokens_in", "tokens_out", "api_calls", "cost_micro_usd", "status",
                  "enforcement_mode", "settled_late", "max_tokens_fitted", "admitted_at", "created_at")
        assert {f: getattr(returned, f) for f in fields} == {f: getattr(stored, f) for f in fields}
        assert (stored.admitted_at, stored.created_at) == (NOW, NOW + timedelta(seconds=2))
        # X-Quota-Tokens-Remaining: the tightest token quota, after this call and the other's hold.
        day = meter(tenant, "TOKENS", "DAY", now=NOW)
        assert returned.quota_tokens_remaining == 5_000 - day.used - day.reserved == 5_000 - 158 - 300
        rollup = UsageDaily.objects.get(tenant=tenant, day=NOW.date())
        assert (rollup.requests, rollup.tokens_in, rollup.tokens_out, rollup.cost_micro_usd, rollup.api_calls) == (
            1, 100, 58, 1_234, 2)
        settle(other, now=NOW + timedelta(seconds=3))

    def test_search_fees_are_recorded_apart_within_the_cost_in_the_ledger_and_the_rollup(self, tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        rule("tenant_cost_per_month_usd", "100", tenant=tenant)
        _, first = admit(user, "req-fees-1", now=NOW)
        _, second = admit(user, "req-fees-2", now=NOW)
        # cost = the tokens' cost + the priced search requests (llm/metered.py current_outcome)
        returned = settle(first, now=NOW, cost=1_000 + 2_570, search_fees=2_570, api_calls=4)
        settle(second, now=NOW, cost=900 + 75, search_fees=75, api_calls=2)
        _, plain = admit(user, "req-plain", now=NOW)
        settle(plain, now=NOW, cost=800)
        assert returned.search_fees_micro_usd == 2_570
        fees = dict(UsageLog.objects.values_list("request_id", "search_fees_micro_usd"))
        assert fees == {"req-fees-1": 2_570, "req-fees-2": 75, "req-plain": 0}
        assert UsageLog.objects.get(request_id="req-fees-1").cost_micro_usd == 3_570
        rollup = UsageDaily.objects.get(tenant=tenant, day=NOW.date())
        assert (rollup.requests, rollup.cost_micro_usd, rollup.search_fees_micro_usd) == (3, 5_345, 2_645)
        # The cost meters count the fees once: they are part of cost_micro_usd, not added to it.
        assert meter(tenant, "COST", "MONTH", now=NOW).used == 5_345

    def test_a_request_id_is_admitted_once(self, tenant_admin):
        user = tenant_admin.user
        admit(user, "req-1")
        before = state()
        with pytest.raises(IntegrityError), transaction.atomic():
            admit(user, "req-1")
        assert state() == before

    def test_settling_a_reservation_that_does_not_exist_raises(self, tenant_admin):
        with pytest.raises(services.ReservationLost):
            services.usage_settle(reservation_id=uuid.uuid4(), outcome=outcome())

    # expiry and renewal --------------------------------------------------------------------------

    def test_expiry_releases_writes_no_ledger_row_and_a_late_settlement_charges_once(self, tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        decision, stale = admit(user, "req-stale", now=NOW - timedelta(seconds=LEASE + 60))
        _, live = admit(user, "req-live", now=NOW)
        month = meter(tenant, "TOKENS", "MONTH", now=NOW)
        live_amount = month.reserved - hold(decision, "tenant_tokens_per_month").amount

        assert services.reservations_expire(now=NOW) == 1
        assert UsageReservation.objects.get(pk=stale.reservation_id).status == UsageReservation.Status.EXPIRED
        assert not UsageLog.objects.filter(request_id="req-stale").exists()
        month.refresh_from_db()
        assert (month.used, month.reserved) == (0, live_amount)
        assert services.reservation_renew(reservation_id=stale.reservation_id, now=NOW) is False
        assert services.reservations_expire(now=NOW) == 0

        late = settle(stale, tokens_out=77)
        assert late is not None and late.settled_late
        month.refresh_from_db()
        assert (month.used, month.reserved) == (177, live_amount)  # charged; its holds not released twice
        before = state()
        assert settle(stale) is None
        assert state() == before
        assert UsageLog.objects.filter(request_id="req-stale", settled_late=True).count() == 1
        assert settle(live).settled_late is False

    def test_a_reservation_released_by_hand_frees_its_holds_and_still_charges_a_late_settlement(self,
                                                                                               tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        _, admission = admit(user, "req-1", now=NOW)
        assert services.reservation_release(reservation_id=admission.reservation_id, reason="stuck")
        assert not services.reservation_release(reservation_id=admission.reservation_id)
        month = meter(tenant, "TOKENS", "MONTH", now=NOW)
        assert (month.used, month.reserved) == (0, 0) and not UsageLog.objects.exists()
        assert settle(admission, tokens_out=5).settled_late
        month.refresh_from_db()
        assert (month.used, month.reserved) == (105, 0)

    def test_a_renewed_lease_is_not_expired_under_a_running_call(self, tenant_admin):
        user = tenant_admin.user
        start = timezone.now()
        _, admission = admit(user, "req-1", now=start)
        assert services.reservation_renew(reservation_id=admission.reservation_id, now=start + timedelta(seconds=100))
        assert services.reservations_expire(now=start + timedelta(seconds=LEASE + 1)) == 0
        assert services.reservations_expire(now=start + timedelta(seconds=100 + LEASE + 1)) == 1

    # Idempotency-Key -----------------------------------------------------------------------------

    def test_an_idempotency_key_in_flight_refuses_a_second_admission_writing_nothing(self, tenant_admin):
        user = tenant_admin.user
        _, first = admit(user, "req-1", key="key-1")
        before = state()
        with pytest.raises(services.IdempotencyInFlight):
            admit(user, "req-2", key="key-1")
        assert state() == before
        assert services.idempotency_lookup(tenant_id=user.tenant_id, key="key-1",
                                           fingerprint="body-1").pk == first.reservation_id
        # A failed call frees its key for a real retry; a successful one keeps it (the retry gets its answer).
        settle(first, status=UsageLog.Status.ERROR, tokens_out=0)
        _, retry = admit(user, "req-3", key="key-1")
        settle(retry)
        with pytest.raises(services.IdempotencyInFlight):
            admit(user, "req-4", key="key-1")
        assert services.idempotency_lookup(tenant_id=user.tenant_id, key="key-1",
                                           fingerprint="body-1").pk == retry.reservation_id

    def test_an_idempotency_key_in_flight_still_leaves_the_meters_it_needed(self, tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        decision, first = admit(user, "req-1", key="key-1", now=NOW)
        rule("tenant_tokens_per_month", 1_000_000, tenant=tenant, task="LLM2_DRAFT")  # a meter nobody has
        with pytest.raises(services.IdempotencyInFlight):
            admit(user, "req-2", key="key-1", now=NOW)
        # Taken no hold of its own; the new meter is there (the PostgreSQL function commits it before it
        # finds the key taken), and the call in flight is adopted by it.
        new = meter(tenant, "TOKENS", "MONTH", task="LLM2_DRAFT", now=NOW)
        assert (new.used, new.reserved) == (0, hold(decision, "tenant_tokens_per_month").amount)
        assert UsageReservation.objects.count() == 1
        settle(first, now=NOW, tokens_out=1)
        new.refresh_from_db()
        assert (new.used, new.reserved) == (101, 0)

    # the spool ----------------------------------------------------------------------------------

    @pytest.fixture
    def spooled(self, settings, tmp_path):
        """The spool on whatever store the run has (Redis where REDIS_URL is set, else files), under a
        key of this test's own."""
        settings.METERING_SPOOL_DIR = tmp_path / "spool"
        settings.METERING_SPOOL_REDIS_KEY = f"test:usage-spool:{uuid.uuid4().hex}"
        yield
        client = spool._redis()
        if client is not None:
            client.delete(settings.METERING_SPOOL_REDIS_KEY)

    def _spool(self, user, request_id: str, decision: EnforcementDecision, now: datetime, **kwargs) -> None:
        spool.spool_write(request_id=request_id, tenant_id=user.tenant_id, user_id=user.pk,
                          task_id=decision.task.id, feature_code=decision.task.feature_code, mode="SHADOW",
                          admitted_at=now, holds=decision.holds, outcome=outcome(**kwargs))

    def test_a_spooled_call_never_admitted_is_recorded_exactly_once(self, tenant_admin, spooled):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        self._spool(user, "req-spooled", evaluate(user, now=NOW), NOW, tokens_out=120, cost=500, search_fees=300)
        assert spool.spool_replay() == 1
        log = UsageLog.objects.get(request_id="req-spooled")
        assert (log.tokens_out, log.cost_micro_usd, log.search_fees_micro_usd) == (120, 500, 300)
        assert UsageDaily.objects.get(tenant=tenant, day=NOW.date()).search_fees_micro_usd == 300
        month = meter(tenant, "TOKENS", "MONTH", now=NOW)
        assert (month.used, month.reserved) == (220, 0)
        assert spool.spool_replay() == 0
        month.refresh_from_db()
        assert month.used == 220 and UsageLog.objects.count() == 1

    def test_a_spooled_call_admitted_before_the_outage_settles_its_reservation_once(self, tenant_admin, spooled):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        decision, admitted = admit(user, "req-admitted", now=NOW)
        _, expired = admit(user, "req-expired", now=NOW - timedelta(seconds=LEASE + 60))
        assert services.reservations_expire(now=NOW) == 1
        self._spool(user, "req-admitted", decision, NOW, tokens_out=50)
        self._spool(user, "req-expired", decision, NOW, tokens_out=10)
        assert spool.spool_replay() == 2
        assert spool.spool_replay() == 0
        assert UsageReservation.objects.get(pk=admitted.reservation_id).status == UsageReservation.Status.COMPLETED
        assert UsageLog.objects.get(request_id="req-expired").settled_late
        month = meter(tenant, "TOKENS", "MONTH", now=NOW)
        assert (month.used, month.reserved) == (150 + 110, 0)

    # a meter created mid-period starts from the ledger -------------------------------------------

    def test_a_new_meter_starts_from_the_rollup_of_its_subject_and_period(self, tenant_admin, member):
        admin, tenant, other = tenant_admin.user, tenant_admin.tenant, member.user
        for request_id, user, task, at, tokens_out, cost, calls in (
            ("last-month", admin, "LLM2_DRAFT", LAST_MONTH, 900, 9_000, 9),  # another period
            ("earlier", admin, "LLM2_DRAFT", EARLIER_THIS_MONTH, 200, 2_000, 2),
            ("other-task", admin, "LLM1_PRIOR_ART", EARLIER_THIS_MONTH, 50, 500, 5),
            ("member-today", other, "LLM2_DRAFT", NOW - timedelta(hours=1), 70, 700, 3),
            ("admin-this-minute", admin, "LLM2_DRAFT", NOW - timedelta(seconds=20), 11, 110, 1),
        ):
            settle(admit(user, request_id, task=task, now=at)[1], now=at, tokens_out=tokens_out, cost=cost,
                   api_calls=calls)
        # Rules that bring meters nobody has yet (the plan's are all-tasks, tenant-wide or per month).
        for key, value in (("tenant_tokens_per_month", 1_000_000), ("tenant_tokens_per_day", 1_000_000),
                           ("tenant_cost_per_month_usd", "100"), ("tenant_api_calls_per_month", 1_000),
                           ("tenant_rpm", 100)):
            rule(key, value, tenant=tenant, task="LLM2_DRAFT")
        rule("user_tokens_per_day", 1_000_000, user=other)
        rule("user_max_concurrent", 5, user=other)

        _, admission = admit(other, "req-new", now=NOW)

        def started(metric: str, window: str, **subject) -> int:
            found = meter(tenant, metric, window, now=NOW, **subject)
            assert found.used == found.baseline
            return found.used

        # tokens = in + out of the LLM2_DRAFT calls of this month / today, the member's own today.
        assert started("TOKENS", "MONTH", task="LLM2_DRAFT") == 300 + 170 + 111
        assert started("TOKENS", "DAY", task="LLM2_DRAFT") == 170 + 111
        assert started("TOKENS", "DAY", user=other) == 170
        assert started("COST", "MONTH", task="LLM2_DRAFT") == 2_000 + 700 + 110
        assert started("API_CALLS", "MONTH", task="LLM2_DRAFT") == 2 + 3 + 1
        # A minute has no rollup, and a concurrency gauge counts calls in flight, not a total.
        assert started("REQUESTS", "MINUTE", task="LLM2_DRAFT") == 0
        assert started("CONCURRENT", "NONE", user=other) == 0
        # What the selector behind /api/quota/ shows is the same.
        rows = {(r["key"], r["task"]): r for r in selectors.quota_for_caller(context=_context(other), now=NOW)}
        assert rows[("tenant_tokens_per_month", "LLM2_DRAFT")]["used"] == 581
        settle(admission, now=NOW, tokens_out=9)
        assert meter(tenant, "TOKENS", "MONTH", task="LLM2_DRAFT", now=NOW).used == 581 + 109

    def test_a_new_meter_adopts_the_calls_still_in_flight(self, tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        rule("max_concurrent", 10, tenant=tenant, task="LLM2_DRAFT")
        decision, running = admit(user, "req-running", now=NOW)
        _, crashed = admit(user, "req-crashed", now=NOW - timedelta(seconds=LEASE + 60))
        assert services.reservations_expire(now=NOW) == 1
        amount = hold(decision, "tenant_tokens_per_month").amount
        # The rules appear while one call runs and one whose lease ran out may still report.
        rule("tenant_tokens_per_month", 1_000_000, tenant=tenant, task="LLM2_DRAFT")
        rule("user_max_concurrent", 2, user=user)

        _, second = admit(user, "req-second", now=NOW + timedelta(seconds=1))
        tokens = meter(tenant, "TOKENS", "MONTH", task="LLM2_DRAFT", now=NOW)
        slots = meter(tenant, "CONCURRENT", "NONE", user=user)
        # Nothing settled yet on LLM2_DRAFT: it holds its own amount and the running call's.
        assert (tokens.baseline, tokens.used, tokens.reserved) == (0, 0, 2 * amount)
        assert (slots.used, slots.reserved) == (0, 2)  # the running call holds a slot
        before = state()
        refused(user, "req-third", "concurrency_limit", now=NOW + timedelta(seconds=2))
        assert state() == before

        settle(running, now=NOW + timedelta(seconds=3), tokens_out=23)
        tokens.refresh_from_db()
        slots.refresh_from_db()
        assert (tokens.used, tokens.reserved, slots.reserved) == (123, amount, 1)
        settle(crashed, now=NOW + timedelta(seconds=4), tokens_out=5)  # late, and counted here too
        tokens.refresh_from_db()
        assert (tokens.used, tokens.reserved) == (228, amount)
        settle(second, now=NOW + timedelta(seconds=5), tokens_out=1)
        tokens.refresh_from_db()
        assert (tokens.used, tokens.reserved) == (329, 0)

    def test_a_limit_set_below_this_months_usage_refuses_the_next_call(self, tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        for n, at in enumerate((EARLIER_THIS_MONTH, NOW - timedelta(hours=2))):
            settle(admit(user, f"req-{n}", now=at)[1], now=at, tokens_out=400)
        rule("tenant_tokens_per_month", 900, tenant=tenant, task="LLM2_DRAFT")  # 1 000 used already

        error = refused(user, "req-next", "quota_exceeded", now=NOW)
        assert "tenant_tokens_per_month" in error.message
        assert not UsageReservation.objects.filter(request_id="req-next").exists()
        # The refused admission created the meter it needed, from the ledger, and took nothing on it.
        created = meter(tenant, "TOKENS", "MONTH", task="LLM2_DRAFT", now=NOW)
        assert (created.baseline, created.used, created.reserved) == (1_000, 1_000, 0)
        rows = {(r["key"], r["task"]): r for r in selectors.quota_for_caller(context=_context(user), now=NOW)}
        assert (rows[("tenant_tokens_per_month", "LLM2_DRAFT")]["used"],
                rows[("tenant_tokens_per_month", "LLM2_DRAFT")]["remaining"]) == (1_000, 0)
        admit(user, "req-other-task", task="LLM1_PRIOR_ART", now=NOW)  # the rule is LLM2_DRAFT's

    # an API key's own budget (issue 13 §1) ---------------------------------------------------------

    def test_a_key_budget_counts_on_the_keys_own_meter_on_top_of_the_tenants(self, tenant_admin):
        user, tenant = tenant_admin.user, tenant_admin.tenant
        amount = hold(evaluate(user), "tenant_tokens_per_day").amount
        rule("tenant_tokens_per_day", 10 * amount, tenant=tenant)
        rule("max_concurrent", 10, tenant=tenant, task="LLM2_DRAFT")  # the budget, not the slots, refuses
        issued = key_issue(tenant, limits={"key_tokens_per_day": 2 * amount})
        context = key_context(issued)
        decision, first = admit_as(context, "req-key-1", now=NOW)
        spec = hold(decision, "key_tokens_per_day")
        assert (spec.limit, spec.amount, spec.api_key_id) == (2 * amount, amount, issued.api_key.pk)
        log = settle(first, now=NOW, tokens_in=100, tokens_out=amount - 100)
        assert log.api_key_id == issued.api_key.pk  # the ledger names the key, on both backends
        assert UsageLog.objects.get(request_id="req-key-1").api_key_id == issued.api_key.pk
        own = UsageMeter.objects.get(api_key=issued.api_key, metric="TOKENS", window="DAY")
        assert (own.user_id, own.task_id, own.used, own.reserved) == (None, None, amount, 0)
        tenant_meter = meter(tenant, "TOKENS", "DAY", now=NOW)
        assert tenant_meter.api_key_id is None and tenant_meter.used == amount  # counted on both
        admit_as(context, "req-key-2", now=NOW)
        before = state()
        with pytest.raises(TooManyRequests) as error:
            admit_as(context, "req-key-3", now=NOW)
        assert error.value.code == "quota_exceeded" and "key_tokens_per_day" in error.value.message
        assert state()[:4] == before[:4]  # nothing held, no reservation
        assert QuotaAlert.objects.filter(meter=own, kind=QuotaAlert.Kind.QUOTA_EXCEEDED).exists()
        # The same user with a JWT, and another key, are not limited by this key's budget.
        admit(user, "req-jwt", now=NOW)
        admit_as(key_context(key_issue(tenant, name="other")), "req-other-key", now=NOW)
        assert UsageReservation.objects.get(request_id="req-jwt").api_key_id is None

    def test_a_key_cost_budget_per_month(self, tenant_admin):
        tenant = tenant_admin.tenant
        context = key_context(key_issue(tenant, limits={"key_cost_per_month_usd": "0.000001"}))
        spec = hold(evaluate_as(context, now=NOW), "key_cost_per_month_usd")
        assert spec.limit == 1 and spec.metric == "COST" and spec.window == "MONTH"
        with pytest.raises(TooManyRequests) as error:
            admit_as(context, "req-costly", now=NOW)  # its worst case costs more than a micro-dollar
        assert error.value.code == "quota_exceeded" and "key_cost_per_month_usd" in error.value.message

    def test_a_key_meter_created_mid_period_starts_from_the_keys_ledger(self, tenant_admin):
        tenant = tenant_admin.tenant
        issued = key_issue(tenant)
        earlier = key_context(issued)
        settle(admit_as(earlier, "req-earlier", now=EARLIER_THIS_MONTH)[1], now=EARLIER_THIS_MONTH,
               tokens_in=100, tokens_out=400)
        settle(admit_as(earlier, "req-last-month", now=LAST_MONTH)[1], now=LAST_MONTH, tokens_in=100, tokens_out=900)
        admit(tenant_admin.user, "req-jwt", now=EARLIER_THIS_MONTH)  # the user's JWT calls are not the key's
        tenant_services.api_key_limits_set(api_key=issued.api_key, limits={"key_tokens_per_month": 100_000})
        admit_as(key_context(issued), "req-now", now=NOW)
        created = UsageMeter.objects.get(api_key=issued.api_key, metric="TOKENS", window="MONTH")
        assert (created.baseline, created.used) == (500, 500)  # this month's key call only

    def test_a_key_meter_adopts_the_keys_calls_in_flight(self, tenant_admin):
        tenant = tenant_admin.tenant
        issued = key_issue(tenant)
        decision, running = admit_as(key_context(issued), "req-running", now=NOW)
        tenant_services.api_key_limits_set(api_key=issued.api_key, limits={"key_tokens_per_day": 100_000})
        admit_as(key_context(issued), "req-new", now=NOW)
        own = UsageMeter.objects.get(api_key=issued.api_key, metric="TOKENS", window="DAY")
        worst = [h.amount for h in decision.holds if h.metric == "TOKENS"]
        assert worst  # the plan's token quotas hold the running call's worst case
        assert own.reserved == 2 * worst[0]  # the running call's worst case was adopted, plus the new one's
        settle(running, now=NOW, tokens_in=100, tokens_out=50)
        own.refresh_from_db()
        assert own.used == 150


class TestPythonHolds(HoldsContract):
    """On SQLite, and on PostgreSQL with the Python implementation forced."""

    backend = "python"

    @pytest.fixture
    def _backend(self, db, settings):
        from django.db import connection

        if connection.vendor == "postgresql":
            settings.METERING_HOLDS_BACKEND = "python"


class TestPostgresHolds(HoldsContract):
    """The PostgreSQL functions."""

    pytestmark = pytest.mark.postgres
    backend = "postgres"

    @pytest.fixture
    def _backend(self, db, settings):
        require_postgres()
        settings.METERING_HOLDS_BACKEND = ""  # the default there


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["python", "postgres"])
class TestMeterCreationRaces:
    """A call settling while the meter it did not hold is being created counts there exactly once,
    whichever commits first (metering/meter_start.py): on PostgreSQL, where the two really run at once,
    for both implementations. Each side runs in a thread of its own with its own connection, and holds
    its transaction open until the test lets it commit."""

    @pytest.fixture(autouse=True)
    def _setup(self, settings, backend, tenant_admin):
        require_postgres("row locks between connections")
        settings.METERING_HOLDS_BACKEND = "python" if backend == "python" else ""
        settings.RESERVATION_LEASE_SECONDS = LEASE
        user, tenant = tenant_admin.user, tenant_admin.tenant
        rule("max_concurrent", 10, tenant=tenant, task="LLM2_DRAFT")
        self.user, self.tenant = user, tenant
        _, self.running = admit(user, "req-running")
        rule("tenant_tokens_per_month", 1_000_000, tenant=tenant, task="LLM2_DRAFT")  # its meter: not yet
        self.decision = evaluate(user)
        self.amount = hold(self.decision, "tenant_tokens_per_month", task=True).amount
        yield
        assert services.meters_reconcile() == []

    def _in_thread(self, work, *, hold_open: threading.Event | None = None) -> tuple[threading.Thread, dict]:
        """Run `work` in its own transaction on its own connection; commit when `hold_open` is set."""
        state_: dict = {"reached": threading.Event(), "done": threading.Event()}

        def run() -> None:
            try:
                with transaction.atomic():
                    work()
                    state_["reached"].set()
                    if hold_open is not None:
                        assert hold_open.wait(10)
            except BaseException as error:  # reported by the test below
                state_["error"] = error
            finally:
                state_["reached"].set()
                state_["done"].set()
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        return thread, state_

    def _admit_new(self) -> None:
        services.usage_admit(tenant_id=self.tenant.pk, user_id=self.user.pk, decision=self.decision,
                             request_id="req-new", mode="HARD", now=timezone.now())

    def _settle_running(self) -> None:
        services.usage_settle(reservation_id=self.running.reservation_id, outcome=outcome(tokens_out=23))

    def _finish(self, *threads) -> None:
        for thread, state_ in threads:
            thread.join(15)
            assert not thread.is_alive() and "error" not in state_, state_.get("error")

    def test_a_settlement_committing_first_is_in_the_baseline_and_not_adopted(self):
        commit = threading.Event()
        settling = self._in_thread(self._settle_running, hold_open=commit)
        assert settling[1]["reached"].wait(10)  # settled, not committed: its reservation is locked
        admitting = self._in_thread(self._admit_new)
        assert not admitting[1]["done"].wait(0.5)  # the meter's creator waits for that settlement
        commit.set()
        self._finish(settling, admitting)

        created = meter(self.tenant, "TOKENS", "MONTH", task="LLM2_DRAFT")
        assert (created.baseline, created.used, created.reserved) == (123, 123, self.amount)
        assert not UsageHold.objects.filter(meter=created, reservation_id=self.running.reservation_id).exists()

    def test_a_settlement_coming_while_the_meter_is_created_settles_through_the_adopted_hold(self):
        commit = threading.Event()
        admitting = self._in_thread(self._admit_new, hold_open=commit)
        assert admitting[1]["reached"].wait(10)  # the meter exists, uncommitted, the running call adopted
        settling = self._in_thread(self._settle_running)
        assert not settling[1]["done"].wait(0.5)  # the settlement waits for the meter and its adopted hold
        commit.set()
        self._finish(admitting, settling)

        created = meter(self.tenant, "TOKENS", "MONTH", task="LLM2_DRAFT")
        assert (created.baseline, created.used, created.reserved) == (0, 123, self.amount)
        assert UsageHold.objects.filter(meter=created, reservation_id=self.running.reservation_id).exists()
