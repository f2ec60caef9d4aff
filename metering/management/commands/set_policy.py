"""Create or update one policy rule, or (--delete / --deactivate) remove or switch off the one rule
the same options name; every write goes through metering.services.policy_rules (validated, audited)."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, time
from typing import Any

from django.core.management.base import CommandError

from catalog.models import Plan, Task
from metering import services
from metering.models import PolicyRule
from metering.policy_keys import POLICY_KEYS
from tenants.audit import AuditSource
from tenants.management.commands._base import GatewayCommand
from tenants.models import Tenant, User

SCOPES = [s.lower() for s in PolicyRule.Scope.values]
# Which subject option each scope needs; every other subject option is refused.
SUBJECT_OPTION = {"global": None, "plan": "plan", "tenant": "tenant", "user": "user"}


def _weekdays(raw: str) -> list[int]:
    try:
        days = sorted({int(part) for part in raw.split(",") if part.strip()})
    except ValueError:
        raise CommandError(f"--weekdays takes numbers 0 (Monday) to 6 (Sunday) separated by commas, not '{raw}'.")
    if not days or any(d not in range(7) for d in days):
        raise CommandError(f"--weekdays takes numbers 0 (Monday) to 6 (Sunday) separated by commas, not '{raw}'.")
    return days


def _time(option: str, raw: str) -> time:
    try:
        return datetime.strptime(raw.strip(), "%H:%M").time()
    except ValueError:
        raise CommandError(f"{option} takes a time as HH:MM (24-hour), not '{raw}'.")


def _timezone(raw: str) -> str:
    try:
        zoneinfo.ZoneInfo(raw)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise CommandError(f"Unknown time zone '{raw}' (use an IANA name such as Europe/Paris or UTC).")
    return raw


class Command(GatewayCommand):
    help = (
        "Set a policy rule: --scope global|plan|tenant|user [--plan CODE] [--tenant SLUG] [--user USERNAME] "
        "[--task CODE] --key KEY --value VALUE [--weekdays 0,1,2,3,4 --start HH:MM --end HH:MM --timezone TZ] "
        "[--when-quota KEY --when-percent N]. With --delete or --deactivate (no --value): delete or switch off "
        "the rule those options name (or the rule --id N)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--scope", required=True, type=str.lower, choices=SCOPES,
                            help="Who the rule is for: global < plan < tenant < user (the most specific wins).")
        parser.add_argument("--plan", help="The plan's code (with --scope plan).")
        parser.add_argument("--tenant", help="The tenant's slug (with --scope tenant).")
        parser.add_argument("--user", help="The username (with --scope user).")
        parser.add_argument("--task", help="Limit the rule to one task (e.g. LLM2_DRAFT); default: all tasks.")
        parser.add_argument("--key", help=f"A policy key: {', '.join(POLICY_KEYS)}.")
        parser.add_argument(
            "--value",
            help='The value: a whole number, an amount of USD ("12.50"), or model classes ("BASE_S,BASE_M").',
        )
        parser.add_argument("--weekdays", help="Time window: weekdays it applies on, 0=Monday, e.g. 0,1,2,3,4.")
        parser.add_argument("--start", help="Time window: start time HH:MM (local to --timezone).")
        parser.add_argument("--end", help="Time window: end time HH:MM; before --start = a window over midnight.")
        parser.add_argument("--timezone", default="UTC", help="Time zone of the window (IANA name). Default UTC.")
        parser.add_argument("--when-quota", dest="when_quota", default="",
                            help="Usage-based throttling: apply only once this quota key is ...")
        parser.add_argument("--when-percent", dest="when_percent", type=int,
                            help="... at least this percent used (1-100).")
        parser.add_argument("--note", default="", help="A note kept on the rule.")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--delete", action="store_true",
                            help="Delete the rule these options name instead of setting it (audited).")
        action.add_argument("--deactivate", action="store_true",
                            help="Switch the rule off instead (kept, shown as inactive, not enforced; audited).")
        parser.add_argument("--id", dest="rule_id", type=int,
                            help="With --delete/--deactivate: the rule's id (its scope must match --scope).")

    def run(self, **options: Any) -> dict[str, Any]:
        scope = options["scope"]
        removing = options["delete"] or options["deactivate"]
        if removing and options["rule_id"] is not None:
            return self._remove(options, PolicyRule.objects.filter(pk=options["rule_id"], scope=scope.upper()))
        wanted = SUBJECT_OPTION[scope]
        for option in ("plan", "tenant", "user"):
            if option != wanted and options.get(option):
                raise CommandError(f"--{option} does not go with --scope {scope}.")
        if wanted and not options.get(wanted):
            raise CommandError(f"--scope {scope} needs --{wanted}.")
        subject: dict[str, Any] = {}
        if wanted == "plan":
            subject["plan"] = Plan.objects.filter(code=options["plan"]).first()
            if subject["plan"] is None:
                known = ", ".join(Plan.objects.order_by("code").values_list("code", flat=True))
                raise CommandError(f"Unknown plan '{options['plan']}'. Known plans: {known}.")
        elif wanted == "tenant":
            subject["tenant"] = Tenant.objects.filter(slug=options["tenant"]).first()
            if subject["tenant"] is None:
                raise CommandError(f"Unknown tenant '{options['tenant']}'.")
        elif wanted == "user":
            subject["user"] = User.objects.filter(username=options["user"]).first()
            if subject["user"] is None:
                raise CommandError(f"Unknown user '{options['user']}'.")
        task = None
        if options.get("task"):
            task = Task.objects.filter(code=options["task"]).first()
            if task is None:
                known = ", ".join(Task.objects.order_by("code").values_list("code", flat=True))
                raise CommandError(f"Unknown task '{options['task']}'. Known tasks: {known}.")
        if not options.get("key"):
            raise CommandError("--key is required (or --id with --delete/--deactivate).")
        if options["key"] not in POLICY_KEYS:
            raise CommandError(f"Unknown policy key '{options['key']}'. Known keys: {', '.join(sorted(POLICY_KEYS))}.")
        weekdays = _weekdays(options["weekdays"]) if options.get("weekdays") else None
        start = _time("--start", options["start"]) if options.get("start") else None
        end = _time("--end", options["end"]) if options.get("end") else None
        if start is not None and end is not None and start == end:
            raise CommandError("--start and --end are equal: the window would never apply.")
        zone = _timezone(options["timezone"])
        when_quota, when_percent = options["when_quota"], options["when_percent"]
        if removing:
            # The rule is named like `set` names it: scope, subject, task, key, window and condition.
            candidates = PolicyRule.objects.filter(
                scope=scope.upper(), plan=subject.get("plan"), tenant=subject.get("tenant"), user=subject.get("user"),
                task=task, key=options["key"], start_time=start, end_time=end, when_quota_key=when_quota or "")
            wanted_days = sorted(set(weekdays)) if weekdays else None
            ids = [r.pk for r in candidates if (sorted(set(r.weekdays)) if r.weekdays else None) == wanted_days]
            return self._remove(options, PolicyRule.objects.filter(pk__in=ids))
        if options.get("value") is None:
            raise CommandError("--value is required to set a rule.")
        if bool(when_quota) != (when_percent is not None):
            raise CommandError("--when-quota and --when-percent go together.")

        rule = services.policy_rule_set(
            scope=scope.upper(), key=options["key"], value=options["value"], task=task, weekdays=weekdays,
            start_time=start, end_time=end, timezone_name=zone, when_quota_key=when_quota,
            when_usage_percent_gte=when_percent, note=options["note"], **subject,
        )
        return {
            "id": rule.pk,
            "scope": rule.scope,
            "subject": str(rule.plan or rule.tenant or rule.user or "") or None,
            "task": task.code if task else None,
            "key": rule.key,
            "value": rule.value,
            "weekdays": rule.weekdays,
            "start_time": rule.start_time.strftime("%H:%M") if rule.start_time else None,
            "end_time": rule.end_time.strftime("%H:%M") if rule.end_time else None,
            "timezone": rule.timezone,
            "when_quota_key": rule.when_quota_key or None,
            "when_usage_percent_gte": rule.when_usage_percent_gte,
        }

    def _remove(self, options: dict[str, Any], rules) -> dict[str, Any]:
        found = list(rules.select_related("plan", "tenant", "user", "task").order_by("pk")[:2])
        if not found:
            raise CommandError("No such rule (check --scope, the subject, --task, --key, the window and condition).")
        if len(found) > 1:
            raise CommandError(f"These options name several rules (e.g. #{found[0].pk}, #{found[1].pk}): use --id.")
        rule = found[0]
        result = {"id": rule.pk, "scope": rule.scope, "key": rule.key, "task": rule.task.code if rule.task_id else None,
                  "subject": str(rule.plan or rule.tenant or rule.user or "") or None}
        if options["delete"]:
            services.policy_rule_delete(rule_id=rule.pk, source=AuditSource.COMMAND)
            return {**result, "deleted": True}
        services.policy_rule_deactivate(rule_id=rule.pk, source=AuditSource.COMMAND)
        return {**result, "deactivated": True}

    def describe(self, result: dict[str, Any]) -> str:
        if result.get("deleted") or result.get("deactivated"):
            who = result["scope"].lower() + (f" {result['subject']}" if result["subject"] else "")
            verb = "deleted" if result.get("deleted") else "switched off (kept, inactive)"
            return f"Rule #{result['id']} ({who}, {result['task'] or 'all tasks'}): {result['key']} {verb}."
        who = result["scope"].lower() + (f" {result['subject']}" if result["subject"] else "")
        text = (f"Rule #{result['id']} ({who}, {result['task'] or 'all tasks'}): "
                f"{result['key']} = {result['value']}")
        if result["weekdays"] or result["start_time"] or result["end_time"]:
            days = ",".join(map(str, result["weekdays"])) if result["weekdays"] else "every day"
            text += (f"; window {days} {result['start_time'] or '00:00'}-{result['end_time'] or '24:00'} "
                     f"{result['timezone']}")
        if result["when_quota_key"]:
            text += f"; when {result['when_quota_key']} >= {result['when_usage_percent_gte']}%"
        return text + "."
