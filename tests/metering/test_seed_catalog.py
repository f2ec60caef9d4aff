"""seed_catalog: what it creates, that a re-run changes nothing, and that operator edits survive it."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from catalog.models import Feature, ModelClass, Plan, PlanFeature, PlanLLMAccess, ProviderModel, Task
from metering.models import PolicyRule

MODELS = [ModelClass, Feature, Task, Plan, PlanFeature, PlanLLMAccess, PlanLLMAccess.model_classes.through,
          ProviderModel, PolicyRule]


def seed() -> str:
    out = StringIO()
    call_command("seed_catalog", stdout=out)
    return out.getvalue()


def counts() -> dict[str, int]:
    return {model._meta.label: model.objects.count() for model in MODELS}


def snapshot() -> dict[str, list]:
    return {model._meta.label: sorted(map(repr, model.objects.values())) for model in MODELS}


def plan_rule(plan: str, key: str, task: str | None = None) -> PolicyRule:
    return PolicyRule.objects.get(
        scope=PolicyRule.Scope.PLAN, plan__code=plan, key=key, task__code=task, when_quota_key="",
    ) if task else PolicyRule.objects.get(
        scope=PolicyRule.Scope.PLAN, plan__code=plan, key=key, task__isnull=True, when_quota_key="",
    )


def classes(plan: str, task: str) -> set[str]:
    access = PlanLLMAccess.objects.get(plan__code=plan, task__code=task)
    return set(access.model_classes.values_list("code", flat=True))


def test_seed_creates_the_catalog(db):
    out = seed()
    assert "Catalog seeded" in out
    assert set(Plan.objects.values_list("code", flat=True)) == {"FREE", "PRO", "ENTERPRISE"}
    assert set(Task.objects.values_list("code", flat=True)) == {"LLM1_PRIOR_ART", "LLM2_DRAFT", "LLM3_DIAGRAM"}
    assert Feature.objects.count() == 3
    assert list(ModelClass.objects.order_by("rank").values_list("code", flat=True)) == [
        "BASE_S", "BASE_M", "PRO_M", "PRO_L", "ADVANCED",
    ]
    models = set(ProviderModel.objects.values_list("provider", "model_name"))
    for expected in [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("gemini", "gemini-2.5-pro"),
                     ("gemini", "gemini-2.5-flash"), ("grok", "grok-3"), ("grok", "grok-3-mini")]:
        assert expected in models
    assert ProviderModel.objects.filter(provider="anthropic").exists()
    # An offline model for every class, and every model has a real (non-zero) price.
    offline = set(ProviderModel.objects.filter(provider="offline").values_list("model_class__code", flat=True))
    assert offline == set(ModelClass.objects.values_list("code", flat=True))
    assert not ProviderModel.objects.filter(input_price_per_mtok_micro_usd__lte=0).exists()
    assert not ProviderModel.objects.filter(output_price_per_mtok_micro_usd__lte=0).exists()


def test_seed_plan_access(db):
    seed()
    full = {
        "LLM1_PRIOR_ART": {"BASE_S", "BASE_M"},
        "LLM2_DRAFT": {"PRO_M", "PRO_L", "ADVANCED"},
        "LLM3_DIAGRAM": {"BASE_M", "PRO_M"},
    }
    for task, allowed in full.items():
        assert classes("ENTERPRISE", task) == allowed
        assert classes("PRO", task) <= allowed
    assert classes("PRO", "LLM1_PRIOR_ART") == full["LLM1_PRIOR_ART"]
    assert classes("PRO", "LLM3_DIAGRAM") == full["LLM3_DIAGRAM"]
    # FREE gets a smaller subset.
    free = PlanLLMAccess.objects.filter(plan__code="FREE")
    free_pairs = {(a.task.code, c) for a in free for c in a.model_classes.values_list("code", flat=True)}
    full_pairs = {(t, c) for t, cs in full.items() for c in cs}
    assert free_pairs and free_pairs < full_pairs


@pytest.mark.parametrize("task, limit", [("LLM1_PRIOR_ART", 3), ("LLM2_DRAFT", 2), ("LLM3_DIAGRAM", 5)])
def test_seed_pro_concurrency_defaults(db, task, limit):
    seed()
    rule = plan_rule("PRO", "max_concurrent", task)
    assert rule.value == limit
    assert rule.seeded and rule.is_active and rule.tenant_id is None and rule.user_id is None


def test_seed_pro_request_and_monthly_limits(db):
    seed()
    assert plan_rule("PRO", "max_tokens_out").value > 0
    assert plan_rule("PRO", "max_tokens_in").value > 0
    assert plan_rule("PRO", "tenant_tokens_per_month").value > plan_rule("FREE", "tenant_tokens_per_month").value


def test_seed_twice_changes_nothing(db):
    seed()
    before_counts, before = counts(), snapshot()
    out = seed()
    assert "nothing to create" in out
    assert counts() == before_counts
    assert snapshot() == before


def test_seed_never_overwrites_an_operator_edited_rule(db):
    seed()
    rule = plan_rule("PRO", "tenant_tokens_per_month")
    original = rule.value
    rule.value = original + 12_345
    rule.save()
    concurrency = plan_rule("PRO", "max_concurrent", "LLM2_DRAFT")
    concurrency.value = 7
    concurrency.save()
    before_counts = counts()

    seed()

    rule.refresh_from_db()
    assert rule.value == original + 12_345
    concurrency.refresh_from_db()
    assert concurrency.value == 7
    assert counts() == before_counts  # no second (default) rule appeared beside the edited one


def test_seed_never_overwrites_edited_catalog_rows(db):
    seed()
    gpt4o = ProviderModel.objects.get(provider="openai", model_name="gpt-4o")
    gpt4o.input_price_per_mtok_micro_usd = 1
    gpt4o.is_active = False
    gpt4o.save()
    access = PlanLLMAccess.objects.get(plan__code="PRO", task__code="LLM2_DRAFT")
    access.model_classes.set(ModelClass.objects.filter(code="PRO_M"))

    seed()

    gpt4o.refresh_from_db()
    assert gpt4o.input_price_per_mtok_micro_usd == 1 and gpt4o.is_active is False
    assert classes("PRO", "LLM2_DRAFT") == {"PRO_M"}


def test_seed_keeps_a_deactivated_rule_off(db):
    seed()
    rule = plan_rule("PRO", "tenant_rpm")
    rule.is_active = False
    rule.save()
    seed()
    rule.refresh_from_db()
    assert rule.is_active is False
    assert PolicyRule.objects.filter(scope=PolicyRule.Scope.PLAN, plan__code="PRO", key="tenant_rpm").count() == 1


def test_seed_fills_in_what_is_missing(db):
    seed()
    before = counts()
    plan_rule("PRO", "max_concurrent", "LLM3_DIAGRAM").delete()
    ProviderModel.objects.filter(provider="offline", model_name="offline-base-s").delete()

    out = seed()

    assert "created" in out
    assert counts() == before
    assert plan_rule("PRO", "max_concurrent", "LLM3_DIAGRAM").value == 5


def test_seed_quiet_with_verbosity_zero(db):
    out = StringIO()
    call_command("seed_catalog", verbosity=0, stdout=out)
    assert out.getvalue() == ""
    assert Plan.objects.count() == 3
