"""`set_policy ... --delete` / `--deactivate`: the rule the options name is removed or switched off, audited."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from metering.models import PolicyRule
from tenants.audit import AuditEvent

pytestmark = pytest.mark.django_db


def run(*args: str) -> dict:
    out = StringIO()
    call_command("set_policy", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_delete_removes_the_named_rule_and_is_audited(tenant_admin):
    slug = tenant_admin.tenant.slug
    plain = run("--scope", "tenant", "--tenant", slug, "--key", "tenant_rpm", "--value", "7")
    windowed = run("--scope", "tenant", "--tenant", slug, "--key", "tenant_rpm", "--value", "3",
                   "--weekdays", "0,1,2,3,4", "--start", "09:00", "--end", "18:00", "--timezone", "Europe/Paris")
    # The window names the second rule; without it the plain one is meant.
    result = run("--scope", "tenant", "--tenant", slug, "--key", "tenant_rpm", "--weekdays", "4,3,2,1,0",
                 "--start", "09:00", "--end", "18:00", "--delete")
    assert result["deleted"] is True and result["id"] == windowed["id"]
    assert not PolicyRule.objects.filter(pk=windowed["id"]).exists()
    assert PolicyRule.objects.filter(pk=plain["id"]).exists()
    event = AuditEvent.objects.get(action="policy_rule.delete", object_id=str(windowed["id"]))
    assert (event.source, event.tenant_id, event.before["value"]) == ("COMMAND", tenant_admin.tenant.pk, 3)
    with pytest.raises(CommandError, match="No such rule"):
        run("--scope", "tenant", "--tenant", slug, "--key", "tenant_rpm", "--weekdays", "0,1,2,3,4",
            "--start", "09:00", "--end", "18:00", "--delete")


def test_deactivate_keeps_the_rule_inactive_and_is_audited(member):
    rule = run("--scope", "user", "--user", member.user.username, "--task", "LLM2_DRAFT",
               "--key", "user_tokens_per_day", "--value", "5000")
    result = run("--scope", "user", "--user", member.user.username, "--task", "LLM2_DRAFT",
                 "--key", "user_tokens_per_day", "--deactivate")
    assert result["deactivated"] is True
    assert PolicyRule.objects.get(pk=rule["id"]).is_active is False
    event = AuditEvent.objects.get(action="policy_rule.deactivate", object_id=str(rule["id"]))
    assert (event.before, event.after, event.tenant_id) == ({"is_active": True}, {"is_active": False},
                                                            member.tenant.pk)
    # Setting it again switches it back on.
    run("--scope", "user", "--user", member.user.username, "--task", "LLM2_DRAFT",
        "--key", "user_tokens_per_day", "--value", "6000")
    assert PolicyRule.objects.get(pk=rule["id"]).is_active is True


def test_delete_by_id_checks_the_scope(tenant_admin):
    rule = run("--scope", "tenant", "--tenant", tenant_admin.tenant.slug, "--key", "tenant_rpm", "--value", "9")
    with pytest.raises(CommandError, match="No such rule"):
        run("--scope", "plan", "--id", str(rule["id"]), "--delete")
    run("--scope", "tenant", "--id", str(rule["id"]), "--delete")
    assert not PolicyRule.objects.filter(pk=rule["id"]).exists()


def test_set_still_needs_a_key_and_a_value(tenant_admin):
    with pytest.raises(CommandError, match="--value is required"):
        run("--scope", "tenant", "--tenant", tenant_admin.tenant.slug, "--key", "tenant_rpm")
    with pytest.raises(CommandError, match="--key is required"):
        run("--scope", "tenant", "--tenant", tenant_admin.tenant.slug, "--value", "5")
    with pytest.raises(CommandError):
        run("--scope", "tenant", "--tenant", tenant_admin.tenant.slug, "--key", "tenant_rpm", "--delete",
            "--deactivate")
