"""PostgreSQL's one-call admission and settlement (metering/pg_functions.py): the cases only that path
has. Everything else about admission and settlement is tested on both databases elsewhere."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from llm import metered, openai_wire
from metering import services
from metering.models import UsageHold, UsageLog, UsageMeter, UsageReservation
from metering.spool import spool_pending, spool_replay
from tenants.selectors import identity_resolve
from tests.conftest import require_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def _postgres_only(db, settings, tmp_path):
    require_postgres()
    settings.METERING_SPOOL_DIR = tmp_path / "spool"


def _context(user):
    return identity_resolve(user_id=user.pk, tenant_id=user.tenant_id, ati_id=user.tenant.signup_ati_token_id)


def _admit(user, request_id: str) -> metered._Admitted:
    chat = openai_wire.parse_chat_request({"messages": [{"role": "user", "content": "a hinge"}], "max_tokens": 50})
    admitted = metered._admit(_context(user), "LLM2_DRAFT", chat, 20, request_id, None, "print")
    assert isinstance(admitted, metered._Admitted)
    return admitted


def _lose_admission(reservation_id: uuid.UUID) -> None:
    """What a database crash does to an admission whose commit never reached the disk: every row it
    wrote is gone, together."""
    UsageHold.objects.filter(reservation_id=reservation_id).delete()
    UsageReservation.objects.filter(pk=reservation_id).delete()
    services.meters_reconcile(fix=True)  # the meters' holds, as they were before it


def test_settling_a_reservation_that_never_existed_raises_and_settling_twice_is_a_no_op(tenant_admin):
    outcome = services.CallOutcome(status="SUCCESS", tokens_in=1, tokens_out=1, api_calls=1)
    with pytest.raises(services.ReservationLost):
        services.usage_settle(reservation_id=uuid.uuid4(), outcome=outcome)
    admitted = _admit(tenant_admin.user, "req-twice")
    assert services.usage_settle(reservation_id=admitted.admission.reservation_id, outcome=outcome) is not None
    assert services.usage_settle(reservation_id=admitted.admission.reservation_id, outcome=outcome) is None
    assert UsageLog.objects.filter(request_id="req-twice").count() == 1


def test_a_call_whose_admission_was_lost_is_spooled_and_charged_exactly_once(tenant_admin):
    admitted = _admit(tenant_admin.user, "req-lost")
    _lose_admission(admitted.admission.reservation_id)
    outcome = services.CallOutcome(status="SUCCESS", provider="offline", model_name="offline-draft",
                                   model_class="PRO_M", tokens_in=20, tokens_out=33, api_calls=1,
                                   cost_micro_usd=77)

    assert metered._settle(admitted, _context(tenant_admin.user), "req-lost", outcome) is None
    assert spool_pending() == 1 and not UsageLog.objects.filter(request_id="req-lost").exists()
    assert spool_replay() == 1
    assert spool_replay() == 0
    log = UsageLog.objects.get(request_id="req-lost")
    assert (log.tokens_in, log.tokens_out, log.cost_micro_usd, log.status) == (20, 33, 77, "SUCCESS")
    assert services.meters_reconcile() == []


def test_expiry_of_a_lost_reservation_changes_nothing(tenant_admin):
    admitted = _admit(tenant_admin.user, "req-lost-expiry")
    _lose_admission(admitted.admission.reservation_id)
    assert not services.reservation_release(reservation_id=admitted.admission.reservation_id)
    assert services.reservations_expire(now=timezone.now() + timedelta(hours=1)) == 0
    assert services.meters_reconcile() == []


def test_the_hot_path_calls_are_prepared_on_their_connection(tenant_admin):
    """Parsed and planned once per pooled connection, not on every call (Django leaves psycopg's
    preparing off for its own queries)."""
    outcome = services.CallOutcome(status="SUCCESS", tokens_in=1, tokens_out=1, api_calls=1)
    for n in range(2):
        admitted = _admit(tenant_admin.user, f"req-prepared-{n}")
        services.usage_settle(reservation_id=admitted.admission.reservation_id, outcome=outcome)
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = " ".join(row[0] for row in cursor.fetchall())
    assert "gateway_admit" in prepared and "gateway_settle" in prepared


def test_holds_go_with_their_reservation_and_their_meter(tenant_admin):
    """Hold rows have no database foreign keys (cheaper writes): deletes still cascade, through Django."""
    first, second = _admit(tenant_admin.user, "req-cascade-1"), _admit(tenant_admin.user, "req-cascade-2")
    holds = UsageHold.objects.filter(reservation_id=first.admission.reservation_id)
    meter_id = holds.first().meter_id
    assert holds.count() == len(first.decision.holds) > 1
    UsageReservation.objects.filter(pk=first.admission.reservation_id).delete()
    assert not UsageHold.objects.filter(reservation_id=first.admission.reservation_id).exists()
    UsageMeter.objects.filter(pk=meter_id).delete()
    assert not UsageHold.objects.filter(meter_id=meter_id).exists()
    assert UsageHold.objects.filter(reservation_id=second.admission.reservation_id).count() == \
        len(second.decision.holds) - 1


def test_the_hot_path_functions_never_plan_a_table_scan_and_plan_each_statement_once():
    """Their plans are cached per connection on the statistics of the moment; on a young or freshly
    vacuumed database those say "a few rows", and a cached scan would slow down as the tables grow.
    Left to choose, PL/pgSQL re-plans these parameterised statements on every call."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT proname, proconfig FROM pg_proc WHERE proname IN ('gateway_admit', 'gateway_settle')")
        config = dict(cursor.fetchall())
    settings = ["enable_seqscan=off", "plan_cache_mode=force_generic_plan"]
    assert config == {"gateway_admit": settings, "gateway_settle": settings}


@pytest.mark.parametrize("texts", [
    ["TOKENS", "", "NULL", "null", None, "a,b", "{x}", ' spaced ', 'say "hi"', "back\\slash", '\\"', "é ü"],
])
def test_hold_arrays_reach_postgresql_exactly_as_sent(texts):
    """Holds travel as array literals inside the JSON parameter: any text, NULL and integer arrives as is."""
    from metering.meter_sql import _pg_array

    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text[], %s::bigint[]", [_pg_array(texts), _pg_array([1, None, -7, 10**15])])
        assert cursor.fetchone() == (texts, [1, None, -7, 10**15])
