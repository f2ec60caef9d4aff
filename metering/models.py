"""Enforcement and accounting: policy rules, meters and holds, the ledger, alerts."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce

from catalog.models import Plan, Task
from tenants.models import EnforcementMode, Tenant


class PolicyRule(models.Model):
    """One limit for one subject. The most specific scope wins: GLOBAL < PLAN < TENANT < USER."""

    class Scope(models.TextChoices):
        GLOBAL = "GLOBAL", "Global"
        PLAN = "PLAN", "Plan"
        TENANT = "TENANT", "Tenant"
        USER = "USER", "User"

    scope = models.CharField(max_length=8, choices=Scope.choices)
    plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.CASCADE, related_name="policy_rules")
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="policy_rules")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="policy_rules"
    )
    task = models.ForeignKey(
        Task, null=True, blank=True, on_delete=models.CASCADE, related_name="policy_rules",
        help_text="Empty = the rule applies to all tasks together.",
    )
    key = models.CharField(max_length=64, help_text="A key of the policy registry (metering.policy_keys).")
    value = models.JSONField(help_text="Typed by the key: an integer, or a list of model class codes.")
    # Optional time window: the rule applies only on these weekdays (0=Monday) between these times.
    weekdays = models.JSONField(null=True, blank=True, help_text="List of weekday numbers, 0=Monday.")
    start_time = models.TimeField(null=True, blank=True)
    end_time = models.TimeField(null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    # Usage-based throttling: the rule applies only once this quota key is at least this % used.
    when_quota_key = models.CharField(max_length=64, blank=True)
    when_usage_percent_gte = models.PositiveSmallIntegerField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    note = models.CharField(max_length=200, blank=True)
    # Rules written by seed_catalog carry seeded=True; an operator's edit clears it so a
    # re-seed never overwrites what an operator changed.
    seeded = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "key"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(scope="GLOBAL", plan__isnull=True, tenant__isnull=True, user__isnull=True)
                    | Q(scope="PLAN", plan__isnull=False, tenant__isnull=True, user__isnull=True)
                    | Q(scope="TENANT", plan__isnull=True, tenant__isnull=False, user__isnull=True)
                    | Q(scope="USER", plan__isnull=True, tenant__isnull=True, user__isnull=False)
                ),
                name="policyrule_scope_matches_subject",
            ),
            models.CheckConstraint(
                condition=Q(when_usage_percent_gte__isnull=True) | ~Q(when_quota_key=""),
                name="policyrule_condition_has_key",
            ),
        ]
        indexes = [
            models.Index(fields=["scope", "key"], name="policyrule_scope_key"),
            models.Index(fields=["plan"], name="policyrule_plan"),
            models.Index(fields=["tenant"], name="policyrule_tenant"),
            models.Index(fields=["user"], name="policyrule_user"),
        ]

    def __str__(self) -> str:
        subject = self.plan or self.tenant or self.user or "*"
        return f"{self.scope}:{subject} {self.task or 'all tasks'} {self.key}={self.value}"

    def clean(self) -> None:
        """The row's rules, with a message per field: a known key, a value of the key's type (made
        canonical here, e.g. USD as a string), the subject the scope names and no other, a sane time
        window and usage condition. Run by `full_clean()`, which the policy-rule service (the only
        writer: metering/services/policy_rules.py) and the admin forms call."""
        import zoneinfo

        from django.core.exceptions import ValidationError

        from metering.policy_keys import POLICY_KEYS, KeyKind, PolicyValueError, get_key, validate_value

        errors: dict[str, list[str]] = {}

        def refuse(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        try:
            get_key(self.key)
        except PolicyValueError as exc:
            refuse("key", str(exc))
        else:
            try:
                self.value = validate_value(self.key, self.value)
            except PolicyValueError as exc:
                refuse("value", str(exc))
        # An admin inline validates before its parent row is saved: the subject is then an unsaved
        # object (no id yet), which still counts as named.
        named = {"plan": self.plan_id is not None or self.plan is not None,
                 "tenant": self.tenant_id is not None or self.tenant is not None,
                 "user": self.user_id is not None or self.user is not None}
        needed = {self.Scope.PLAN: "plan", self.Scope.TENANT: "tenant", self.Scope.USER: "user"}.get(self.scope)
        if self.scope not in self.Scope.values:
            refuse("scope", "scope must be GLOBAL, PLAN, TENANT or USER.")
        else:
            for field, is_named in named.items():
                if field == needed and not is_named:
                    refuse(field, f"A {self.scope} rule needs a {field}.")
                elif field != needed and is_named:
                    refuse(field, f"A {self.scope} rule names no {field}: clear this field or change the scope.")
        if self.weekdays is not None:
            if (not isinstance(self.weekdays, list) or not self.weekdays
                    or any(isinstance(d, bool) or d not in range(7) for d in self.weekdays)):
                refuse("weekdays", "weekdays are numbers 0 (Monday) to 6 (Sunday); leave empty for every day.")
            else:
                self.weekdays = sorted(set(self.weekdays))
        if self.start_time is not None and self.start_time == self.end_time:
            refuse("end_time", "The window is empty: start and end are the same time.")
        try:
            zoneinfo.ZoneInfo(self.timezone or "")
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            refuse("timezone", f"Unknown time zone '{self.timezone}'. Use an IANA name such as Europe/Berlin.")
        if self.when_quota_key:
            quota = POLICY_KEYS.get(self.when_quota_key)
            if quota is None or quota.kind != KeyKind.QUOTA:
                refuse("when_quota_key", f"'{self.when_quota_key}' is not a quota key; a condition must name one.")
            if self.when_usage_percent_gte is None or not (0 < self.when_usage_percent_gte <= 100):
                refuse("when_usage_percent_gte",
                       "A usage condition needs a percentage between 1 and 100 (the % of the quota used).")
        elif self.when_usage_percent_gte is not None:
            refuse("when_quota_key",
                   "Pick the quota whose usage % switches the rule on (a usage percentage needs its quota key).")
        if errors:
            raise ValidationError(errors)


class Metric(models.TextChoices):
    TOKENS = "TOKENS", "Tokens"
    API_CALLS = "API_CALLS", "API calls"
    COST = "COST", "Cost (micro-USD)"
    REQUESTS = "REQUESTS", "Requests"
    CONCURRENT = "CONCURRENT", "Concurrent calls"


class Window(models.TextChoices):
    MINUTE = "MINUTE", "Minute"
    DAY = "DAY", "Day"
    MONTH = "MONTH", "Month"
    NONE = "NONE", "None (gauge)"


class UsageMeter(models.Model):
    """A counter for one subject and period. The limit lives in policy, not here."""

    # No index of its own: the indexes below lead with tenant and reach only the current period's
    # rows. Admission's lookup through a plain tenant index read every meter the tenant ever had.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="meters", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.PROTECT)
    # An API key's own budget (policy keys of subject KEY) counts on meters of that key; every other
    # meter has none. No index of its own: the unique key below leads with the tenant.
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.CASCADE, db_index=False,
                                related_name="+")
    metric = models.CharField(max_length=16, choices=Metric.choices)
    window = models.CharField(max_length=8, choices=Window.choices)
    period_start = models.DateTimeField()
    used = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)
    # A meter created during its period starts from what the daily rollup already held for its
    # subject and period (metering/meter_start.py); `used` is this plus what settled through its
    # holds, which is how reconciliation recomputes it. db_default: raw inserts need not name it.
    baseline = models.BigIntegerField(
        default=0, db_default=0,
        help_text="What the ledger already held for this subject and period when the meter was created.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                "tenant", Coalesce("user", 0), Coalesce("task", 0), Coalesce("api_key", 0), "metric", "window",
                "period_start", name="uniq_usage_meter_subject",
            ),
            models.CheckConstraint(condition=Q(used__gte=0), name="meter_used_non_negative"),
            models.CheckConstraint(condition=Q(reserved__gte=0), name="meter_reserved_non_negative"),
        ]
        indexes = [models.Index(fields=["tenant", "window", "period_start"], name="meter_tenant_period")]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.user_id or '*'}/{self.task_id or '*'} {self.metric}/{self.window}"


class UsageReservation(models.Model):
    """The lease that holds one request's budget between admission and settlement."""

    class Status(models.TextChoices):
        ACTIVE = "ACTIVE", "Active"
        COMPLETED = "COMPLETED", "Completed"
        RELEASED = "RELEASED", "Released"
        EXPIRED = "EXPIRED", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request_id = models.CharField(max_length=64)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="reservations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reservations")
    task = models.ForeignKey(Task, on_delete=models.PROTECT)
    # The API key the call authenticated with (None: a JWT). No index or foreign-key check on the hot path.
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.DO_NOTHING, db_index=False,
                                db_constraint=False, related_name="+")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.ACTIVE)
    enforcement_mode = models.CharField(max_length=8, choices=EnforcementMode.choices)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [
            # A constraint rather than unique=True: PostgreSQL then gets no second, pattern-ops
            # index on request_id that no query uses but every admission writes.
            models.UniqueConstraint(fields=["request_id"], name="uniq_reservation_request_id"),
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="uniq_reservation_idempotency_key",
            ),
        ]
        indexes = [models.Index(fields=["status", "expires_at"], name="reservation_status_expiry")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.status}"


class UsageHold(models.Model):
    # Every metered call writes one hold per limit (eight or so) on the hot path, so the row costs
    # as little as it can: no index of its own (the unique (reservation, meter) index serves lookups
    # by reservation) and no database foreign keys, whose checks ran twice per hold at every commit.
    # Only admission writes holds, for the reservation it inserts and the meters it has just locked;
    # deletes cascade through Django.
    reservation = models.ForeignKey(UsageReservation, on_delete=models.CASCADE, related_name="holds",
                                    db_index=False, db_constraint=False)
    meter = models.ForeignKey(UsageMeter, on_delete=models.CASCADE, related_name="holds", db_index=False,
                              db_constraint=False)
    amount = models.BigIntegerField()
    policy_key = models.CharField(max_length=64)
    limit_value = models.BigIntegerField(help_text="The limit in force at admission (alerts compare against it).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["reservation", "meter"], name="uniq_hold_reservation_meter"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="hold_amount_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.policy_key} {self.amount} on meter {self.meter_id}"


class UsageLog(models.Model):
    """The ledger: one immutable row per metered call, refused calls included."""

    class Status(models.TextChoices):
        SUCCESS = "SUCCESS", "Success"
        ERROR = "ERROR", "Error"
        CANCELLED = "CANCELLED", "Cancelled"
        REFUSED = "REFUSED", "Refused"
        EXPIRED = "EXPIRED", "Expired"

    request_id = models.CharField(max_length=64)
    reservation = models.OneToOneField(
        UsageReservation, null=True, blank=True, on_delete=models.SET_NULL, related_name="log"
    )
    # Indexed by (tenant, admitted_at) below; a separate tenant index would only cost writes.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_logs", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="usage_logs")
    task = models.ForeignKey(Task, on_delete=models.PROTECT)
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, db_index=False,
                                related_name="usage_logs", help_text="The API key the call was made with (empty: a JWT).")
    feature_code = models.CharField(max_length=64)
    provider = models.CharField(max_length=32, blank=True)
    model_name = models.CharField(max_length=128, blank=True)
    model_class = models.CharField(max_length=32, blank=True)
    # tokens_in is ALL prompt tokens, cached ones included (limits count every token the model read);
    # of them, tokens_cached_in were read from and tokens_cache_write written to the provider's
    # prompt cache, each priced at its own rate (catalog/pricing.py).
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    tokens_cached_in = models.BigIntegerField(default=0, db_default=0,
                                              help_text="Of tokens_in: read from the prompt cache.")
    tokens_cache_write = models.BigIntegerField(default=0, db_default=0,
                                                help_text="Of tokens_in: written to the prompt cache.")
    api_calls = models.BigIntegerField(default=0)
    cost_micro_usd = models.BigIntegerField(default=0)
    search_fees_micro_usd = models.BigIntegerField(
        default=0, db_default=0,
        help_text="Of cost_micro_usd: the priced outbound requests (prior-art search fees).")
    latency_ms = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices)
    error_code = models.CharField(max_length=64, blank=True)
    enforcement_mode = models.CharField(max_length=8, choices=EnforcementMode.choices)
    would_refuse_code = models.CharField(
        max_length=64, blank=True, help_text="SHADOW/SOFT: the refusal HARD mode would have returned."
    )
    would_refuse = models.JSONField(
        default=list, blank=True,
        help_text="SHADOW/SOFT: every reason HARD would have refused the call for, the one it would have "
                  "returned first: [{code, key, rule}] (rule: the PolicyRule id).")
    usage_estimated = models.BooleanField(default=False)
    settled_late = models.BooleanField(
        default=False, help_text="Settled after its lease expired and its holds were released: charged all the same."
    )
    max_tokens_fitted = models.PositiveIntegerField(
        null=True, blank=True, help_text="Budget fitting shrank the call's max_tokens to this to fit the quota left."
    )
    attempts = models.JSONField(default=list, blank=True, help_text="Failed provider attempts before this one.")
    admitted_at = models.DateTimeField(help_text="Admission time; decides the meter periods this row counts in.")
    created_at = models.DateTimeField()

    # Not stored: settlement fills it from the counters it just updated, so the response's
    # X-Quota-Tokens-Remaining costs no extra query.
    quota_tokens_remaining: int | None = None

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["request_id"], name="uniq_usagelog_request_id"),
            models.CheckConstraint(
                condition=Q(tokens_in__gte=0, tokens_out__gte=0, api_calls__gte=0, cost_micro_usd__gte=0),
                name="usagelog_amounts_non_negative",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "admitted_at"], name="usagelog_tenant_time"),
            models.Index(fields=["tenant", "user", "admitted_at"], name="usagelog_tenant_user_time"),
            models.Index(fields=["admitted_at"], name="usagelog_time"),
            # A key's calls (filters, and a key meter's baseline); only rows made with a key are indexed.
            models.Index(fields=["api_key", "admitted_at"], name="usagelog_key_time", condition=Q(api_key__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.tokens_in + self.tokens_out


class UsageDaily(models.Model):
    """Per-day rollup of the ledger for reports and the console: one row per tenant, user, task, model
    and UTC day, kept by one upsert in the transaction that writes each ledger row (never a ledger scan)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage_daily")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="+")
    model_name = models.CharField(max_length=128, blank=True)
    day = models.DateField()
    requests = models.BigIntegerField(default=0, help_text="Admitted calls (refused ones not included).")
    refused = models.BigIntegerField(default=0)
    tokens_in = models.BigIntegerField(default=0)  # all prompt tokens, cached ones included
    tokens_out = models.BigIntegerField(default=0)
    tokens_cached_in = models.BigIntegerField(default=0, db_default=0)
    tokens_cache_write = models.BigIntegerField(default=0, db_default=0)
    api_calls = models.BigIntegerField(default=0)
    cost_micro_usd = models.BigIntegerField(default=0)
    search_fees_micro_usd = models.BigIntegerField(default=0, db_default=0)  # of cost_micro_usd

    class Meta:
        verbose_name_plural = "usage daily"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user", "task", "model_name", "day"],
                                    name="uniq_usage_daily_subject_day"),
        ]
        indexes = [
            models.Index(fields=["day"], name="usagedaily_day"),
            models.Index(fields=["tenant", "day"], name="usagedaily_tenant_day"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.tenant_id}/{self.user_id}/{self.task_id}/{self.model_name}"


# The alert slice's models live in metering/alerts/models.py; imported here so that Django finds them
# (it reads an app's models module only). New code imports them from metering.alerts.models.
from metering.alerts.models import (  # noqa: E402,F401
    AlertChannel,
    AlertDelivery,
    Notification,
    QuotaAlert,
    UsageDigest,
)


class WouldRefuseDaily(models.Model):
    """Per-day rollup of the calls SHADOW or SOFT let through that HARD would have refused (the rollout
    report reads it, never the ledger), upserted in the transaction that writes each ledger row (both
    holds backends). Per (tenant, day, task), each call is counted once in each of its rows: the row with
    code "" (every such call: what switching to HARD would have refused), a row per refusal code (key "")
    and a row per reason (code, the rule that would have refused, its key); with its tokens and cost."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="would_refuse_daily")
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    code = models.CharField(max_length=64, help_text='The refusal code; "" = the row that counts every call.')
    # Not a foreign key: the report keeps naming a rule that was deleted since.
    rule_id = models.BigIntegerField(default=0, help_text="The PolicyRule that would have refused (0: none).")
    policy_key = models.CharField(max_length=64, blank=True, help_text='"" = the row of the code (or of every call).')
    calls = models.BigIntegerField(default=0)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    api_calls = models.BigIntegerField(default=0)
    cost_micro_usd = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "would-refuse daily"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "day", "task", "code", "rule_id", "policy_key"],
                                    name="uniq_wouldrefuse_daily_reason"),
        ]
        indexes = [models.Index(fields=["day"], name="wouldrefusedaily_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.tenant_id}/{self.task_id} {self.code or 'calls'} {self.policy_key}#{self.rule_id}"
