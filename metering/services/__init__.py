"""Writes of enforcement and accounting, by responsibility:

- `holds`: admission (take every hold of a request or none), settlement, lease renewal and expiry,
  idempotency; its two implementations (PostgreSQL function, Python for SQLite) are in `backends`;
- `thresholds`: quota and concurrency alerts, created once per meter, kind and period;
- `ledger`: the ledger row's companions (daily rollup, refusals, the log line) and reconciliation;
- `policy_rules`: the one way to write policy rules (validated by PolicyRule.clean(), audited, caches dropped).

The names below are the package's public interface.
"""

from metering.rules import CallOutcome
from metering.services.holds import (
    Admission,
    IdempotencyInFlight,
    ReservationLost,
    idempotency_lookup,
    meters_ensure,
    reservation_release,
    reservation_renew,
    reservations_expire,
    usage_admit,
    usage_settle,
)
from metering.services.ledger import MeterDrift, _log_line, meters_reconcile, usage_daily_add, usage_log_refusal
from metering.services.policy_rules import (
    PolicyRuleInvalid,
    policy_rule_activate,
    policy_rule_create,
    policy_rule_deactivate,
    policy_rule_delete,
    policy_rule_save,
    policy_rule_set,
    policy_rule_snapshot,
    policy_rule_update,
)

__all__ = [
    "Admission", "CallOutcome", "IdempotencyInFlight", "MeterDrift", "ReservationLost", "_log_line",
    "idempotency_lookup", "meters_ensure", "meters_reconcile", "PolicyRuleInvalid", "policy_rule_activate",
    "policy_rule_create", "policy_rule_deactivate", "policy_rule_delete", "policy_rule_save", "policy_rule_set",
    "policy_rule_snapshot", "policy_rule_update",
    "reservation_release", "reservation_renew", "reservations_expire", "usage_admit", "usage_daily_add",
    "usage_log_refusal", "usage_settle",
]
