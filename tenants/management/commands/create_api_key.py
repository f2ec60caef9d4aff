"""Create an API key for a tenant (a user key with --user, else a service key). The key is printed once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError
from django.utils import timezone

from tenants import services
from tenants.audit import AuditSource
from tenants.management.commands._base import GatewayCommand
from tenants.models import Tenant, User


def _codes(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Command(GatewayCommand):
    help = ("Create an API key: --tenant SLUG [--user USERNAME] [--name N] [--tasks T1,T2] [--model-classes C1,C2] "
            "[--expires-days N]. Without --user it is a service key. The key is shown once.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--user", help="Username of the tenant's user the key acts as (default: a service key).")
        parser.add_argument("--name", default="", help="A name for the key (default: service key / the user's name).")
        parser.add_argument("--tasks", type=_codes, default=[], help="Comma-separated task codes (default: all).")
        parser.add_argument("--model-classes", type=_codes, default=[], dest="model_classes",
                            help="Comma-separated model class codes (default: all the plan allows).")
        parser.add_argument("--expires-days", type=int, dest="expires_days", help="Expire after this many days.")
        parser.add_argument("--limit", action="append", default=[], dest="limits", metavar="KEY=VALUE",
                            help="The key's own budget, e.g. --limit key_tokens_per_day=100000 "
                                 "--limit key_cost_per_month_usd=25 (repeatable).")

    def run(self, **options: Any) -> dict[str, Any]:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug '{options['tenant']}'.")
        user = None
        if options["user"]:
            user = User.objects.filter(tenant=tenant, username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user '{options['user']}' in tenant {tenant.slug}.")
        if options["expires_days"] is not None and options["expires_days"] <= 0:
            raise CommandError("--expires-days must be a positive number of days.")
        limits = {}
        for item in options["limits"]:
            name, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--limit takes KEY=VALUE, not '{item}'.")
            limits[name.strip()] = value.strip()
        expires_at = timezone.now() + timedelta(days=options["expires_days"]) if options["expires_days"] else None
        issued = services.api_key_create(
            tenant=tenant, user=user, name=options["name"] or (f"{user.username} key" if user else "service key"),
            allowed_tasks=options["tasks"], allowed_model_classes=options["model_classes"], expires_at=expires_at,
            limits=limits, source=AuditSource.COMMAND,
        )
        key = issued.api_key
        return {
            "id": key.pk, "name": key.name, "prefix": key.prefix, "kind": "service" if key.is_service else "user",
            "user": user.username if user else None, "tenant": tenant.slug, "allowed_tasks": key.allowed_tasks,
            "allowed_model_classes": key.allowed_model_classes, "limits": key.limits,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None, "key": issued.secret,
        }

    def describe(self, result: dict[str, Any]) -> str:
        who = f"acting as {result['user']}" if result["user"] else "service key"
        return (f"Created API key #{result['id']} '{result['name']}' for tenant {result['tenant']} ({who}).\n"
                f"Key (shown once, store it now): {result['key']}")
