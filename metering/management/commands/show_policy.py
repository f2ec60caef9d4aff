"""Show the limits in force for a tenant (or one of its users), per task, and which rule each came from."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import CommandError
from django.utils import timezone

from catalog.models import Plan
from catalog.selectors import plan_entitlements, task_get, tasks_all
from metering.policy import effective_limits
from metering.policy_keys import POLICY_KEYS, ValueType
from tenants.management.commands._base import GatewayCommand
from tenants.models import Tenant, User
from tenants.selectors import TenantContext

COLUMNS = [("key", "KEY"), ("value", "VALUE"), ("applies_to", "APPLIES TO"), ("source", "SOURCE")]


def _context(tenant: Tenant, user: User) -> TenantContext:
    """The caller's context as the identity chain builds it. Built here from the rows (not through
    `identity_resolve`) so an operator can inspect a suspended tenant's policy too."""
    plan = Plan.objects.filter(code=tenant.plan_code).first()
    if plan is None:
        raise CommandError(f"Tenant {tenant.slug} is on plan '{tenant.plan_code}', which does not exist.")
    token = tenant.signup_ati_token
    return TenantContext(
        user=user, tenant_id=tenant.pk, tenant_slug=tenant.slug, tenant_name=tenant.name, ati_id=token.pk,
        ati_expires_at=token.expires_at, plan_code=plan.code, plan_id=plan.pk, role=user.role,
        enforcement_mode=tenant.enforcement_mode,
    )


def _display(key: str, value: Any) -> str:
    spec = POLICY_KEYS[key]
    if spec.value_type == ValueType.USD:
        # Metered limits come back in the enforced unit (micro-USD); per-request ones as written.
        amount = Decimal(value) / 1_000_000 if isinstance(value, int) else Decimal(str(value))
        return f"{amount.normalize():f} USD"
    if spec.value_type == ValueType.MODEL_CLASSES:
        return ",".join(value)
    return f"{value} {spec.unit}"


class Command(GatewayCommand):
    help = "Show effective limits with their sources: --tenant SLUG [--user USERNAME] [--task CODE]."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--user", help="A user of the tenant (default: the tenant's first admin).")
        parser.add_argument("--task", help="Only this task (default: every task).")

    def run(self, **options: Any) -> dict[str, Any]:
        tenant = Tenant.objects.select_related("signup_ati_token").filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"Unknown tenant '{options['tenant']}'.")
        if options.get("user"):
            user = User.objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"Unknown user '{options['user']}'.")
            if user.tenant_id != tenant.pk:
                raise CommandError(f"User '{user.username}' does not belong to tenant {tenant.slug}.")
        else:
            user = User.objects.filter(tenant=tenant, role=User.Role.ADMIN).order_by("pk").first()
            if user is None:
                raise CommandError(f"Tenant {tenant.slug} has no admin; name a user with --user.")
        if options.get("task"):
            task = task_get(options["task"])
            if task is None:
                known = ", ".join(t.code for t in tasks_all())
                raise CommandError(f"Unknown task '{options['task']}'. Known tasks: {known}.")
            tasks = [task]
        else:
            tasks = tasks_all()
        context = _context(tenant, user)
        entitlements = plan_entitlements(context.plan_id)
        now = timezone.now()
        result: dict[str, Any] = {
            "tenant": tenant.slug, "user": user.username, "plan": context.plan_code, "evaluated_at": now,
            "tasks": {},
        }
        for task in tasks:
            limits = effective_limits(context=context, task_code=task.code, now=now)
            result["tasks"][task.code] = {
                "in_plan": task.feature_id in entitlements.feature_ids and task.code in entitlements.model_classes,
                "plan_model_classes": list(entitlements.model_classes.get(task.code, ())),
                "limits": [
                    {"key": x.key, "value": x.value, "display": _display(x.key, x.value),
                     "unit": POLICY_KEYS[x.key].unit, "kind": POLICY_KEYS[x.key].kind.value,
                     "applies_to": x.task_code or "all tasks", "source": x.source}
                    for x in limits
                ],
            }
        return result

    def describe(self, result: dict[str, Any]) -> str:
        lines = [f"Effective policy for {result['user']} of tenant {result['tenant']} (plan {result['plan']}), "
                 f"evaluated at {result['evaluated_at']:%Y-%m-%d %H:%M} UTC."]
        for code, info in result["tasks"].items():
            lines.append("")
            if not info["in_plan"]:
                lines.append(f"{code}: not in the {result['plan']} plan.")
                continue
            lines.append(f"{code} (model classes: {', '.join(info['plan_model_classes'])})")
            rows = [{**row, "value": row["display"]} for row in info["limits"]]
            if not rows:
                lines.append("  no limits")
                continue
            widths = {name: max(len(title), *(len(str(r[name])) for r in rows)) for name, title in COLUMNS}
            lines.append("  " + "  ".join(title.ljust(widths[name]) for name, title in COLUMNS).rstrip())
            lines.append("  " + "  ".join("-" * widths[name] for name, _ in COLUMNS))
            for row in rows:
                lines.append("  " + "  ".join(str(row[name]).ljust(widths[name]) for name, _ in COLUMNS).rstrip())
        return "\n".join(lines)
