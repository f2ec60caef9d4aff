"""Idempotent catalog seed: plans, features, tasks, model classes, provider models, access and default rules.

Creates what is missing and never touches what exists, so operator edits survive a re-run.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from catalog.models import (
    Feature,
    ModelClass,
    Plan,
    PlanFeature,
    PlanLLMAccess,
    ProviderModel,
    SearchSourcePrice,
    Task,
)
from metering.models import PolicyRule
from metering.policy_keys import validate_value

MODEL_CLASSES = [
    ("BASE_S", "Base small", 10),
    ("BASE_M", "Base medium", 20),
    ("PRO_M", "Pro medium", 30),
    ("PRO_L", "Pro large", 40),
    ("ADVANCED", "Advanced", 50),
]
FEATURES = [
    ("PRIOR_ART_SEARCH", "Prior-art search"),
    ("PATENT_DRAFTING", "Patent drafting"),
    ("DIAGRAM_GENERATION", "Diagram generation"),
]
TASKS = [
    ("LLM1_PRIOR_ART", "Prior-art search", "PRIOR_ART_SEARCH", "TOKENS"),
    ("LLM2_DRAFT", "Patent drafting", "PATENT_DRAFTING", "TOKENS"),
    ("LLM3_DIAGRAM", "Diagram generation", "DIAGRAM_GENERATION", "TOKENS"),
]
# (provider, model, class, input micro-USD per 1M tokens, output micro-USD per 1M, context, max output, priority)
PROVIDER_MODELS = [
    ("openai", "gpt-4o-mini", "BASE_S", 150_000, 600_000, 128_000, 16_384, 10),
    ("gemini", "gemini-2.5-flash", "BASE_M", 300_000, 2_500_000, 1_048_576, 65_536, 10),
    ("grok", "grok-3-mini", "BASE_M", 300_000, 500_000, 131_072, 16_384, 20),
    ("anthropic", "claude-haiku-4-5", "BASE_M", 1_000_000, 5_000_000, 200_000, 64_000, 30),
    ("openai", "gpt-4o", "PRO_M", 2_500_000, 10_000_000, 128_000, 16_384, 10),
    ("grok", "grok-3", "PRO_M", 3_000_000, 15_000_000, 131_072, 16_384, 20),
    ("gemini", "gemini-2.5-pro", "PRO_L", 1_250_000, 10_000_000, 1_048_576, 65_536, 10),
    ("anthropic", "claude-sonnet-4-5", "PRO_L", 3_000_000, 15_000_000, 200_000, 64_000, 20),
    ("anthropic", "claude-opus-4-1", "ADVANCED", 15_000_000, 75_000_000, 200_000, 32_000, 10),
    # The offline models need no key or network: the embedded default and the test double.
    ("offline", "offline-base-s", "BASE_S", 150_000, 600_000, 128_000, 16_384, 1000),
    ("offline", "offline-base-m", "BASE_M", 300_000, 2_500_000, 128_000, 16_384, 1000),
    ("offline", "offline-pro-m", "PRO_M", 2_500_000, 10_000_000, 128_000, 16_384, 1000),
    ("offline", "offline-pro-l", "PRO_L", 3_000_000, 15_000_000, 200_000, 32_000, 1000),
    ("offline", "offline-advanced", "ADVANCED", 15_000_000, 75_000_000, 200_000, 32_000, 1000),
]
# Prior-art search fees per request (source, kind, micro-USD, where the figure comes from). OpenAlex's
# published API prices: search $1 / 1,000 calls, list/filter $0.10 / 1,000, singletons free. The
# USPTO ODP and EPO OPS are free under their fair-use terms: 0, editable in the admin.
SEARCH_PRICES = [
    ("openalex", "search", 1_000, "OpenAlex: search $1 per 1,000 calls"),
    ("openalex", "list", 100, "OpenAlex: list/filter $0.10 per 1,000 calls"),
    ("openalex", "singleton", 0, "OpenAlex: get by id is free"),
    ("uspto_odp", "search", 0, "USPTO ODP: free with an API key (fair use)"),
    ("epo_ops", "search", 0, "EPO OPS: free within the fair-use quota (4 GB/week)"),
    ("epo_ops", "token", 0, "EPO OPS: OAuth token requests are free"),
]
# Published prompt-cache rates, micro-USD per 1M tokens: (cached input, cache write). OpenAI, xAI and
# Gemini charge no cache write (written tokens cost the input price; Gemini's hourly cache storage is
# not a per-call price); Anthropic's is its 5-minute write. Offline models have none: NULL, billed at
# the input price (catalog/pricing.py). catalog migration 0003 fills the same rates into existing rows.
CACHE_PRICES = {
    ("openai", "gpt-4o-mini"): (75_000, 150_000),
    ("openai", "gpt-4o"): (1_250_000, 2_500_000),
    ("gemini", "gemini-2.5-flash"): (30_000, 300_000),
    ("gemini", "gemini-2.5-pro"): (125_000, 1_250_000),
    ("grok", "grok-3-mini"): (75_000, 300_000),
    ("grok", "grok-3"): (750_000, 3_000_000),
    ("anthropic", "claude-haiku-4-5"): (100_000, 1_250_000),
    ("anthropic", "claude-sonnet-4-5"): (300_000, 3_750_000),
    ("anthropic", "claude-opus-4-1"): (1_500_000, 18_750_000),
}
PLANS = {
    "FREE": ("Free", {"LLM1_PRIOR_ART": ["BASE_S"], "LLM3_DIAGRAM": ["BASE_M"]}),
    "PRO": (
        "Pro",
        {"LLM1_PRIOR_ART": ["BASE_S", "BASE_M"], "LLM2_DRAFT": ["PRO_M", "PRO_L"], "LLM3_DIAGRAM": ["BASE_M", "PRO_M"]},
    ),
    "ENTERPRISE": (
        "Enterprise",
        {
            "LLM1_PRIOR_ART": ["BASE_S", "BASE_M"],
            "LLM2_DRAFT": ["PRO_M", "PRO_L", "ADVANCED"],
            "LLM3_DIAGRAM": ["BASE_M", "PRO_M"],
        },
    ),
}
TASK_FEATURE = {code: feature for code, _, feature, _ in TASKS}
CONCURRENCY = {"LLM1_PRIOR_ART": 3, "LLM2_DRAFT": 2, "LLM3_DIAGRAM": 5}
# key -> value per plan (FREE, PRO, ENTERPRISE); task None = all tasks.
PLAN_RULES: list[tuple[str, str | None, tuple]] = [
    ("max_tokens_in", None, (8_000, 32_000, 128_000)),
    ("max_tokens_out", None, (1_024, 4_096, 8_192)),
    ("tenant_tokens_per_day", None, (20_000, 500_000, 5_000_000)),
    ("tenant_tokens_per_month", None, (200_000, 5_000_000, 50_000_000)),
    ("user_tokens_per_month", None, (100_000, 2_000_000, 20_000_000)),
    ("tenant_cost_per_month_usd", None, ("5", "250", "2500")),
    ("tenant_api_calls_per_month", None, (1_000, 50_000, 500_000)),
    ("tenant_rpm", None, (30, 300, 1_200)),
    ("user_rpm", None, (15, 120, 600)),
    ("max_api_calls", None, (10, 30, 60)),
    ("retrieval_top_k", "LLM1_PRIOR_ART", (10, 25, 50)),
    ("agent_max_steps", "LLM2_DRAFT", (0, 12, 20)),
    ("max_steps", "LLM3_DIAGRAM", (4, 8, 12)),
    ("diagram_files_per_req", "LLM3_DIAGRAM", (2, 5, 10)),
] + [("max_concurrent", task, (n, n, n)) for task, n in CONCURRENCY.items()]
# Usage-based throttling: past 90 % of the monthly tokens, answers get shorter.
THROTTLE_RULES = [("PRO", "max_tokens_out", 1_024, "tenant_tokens_per_month", 90)]


class Command(BaseCommand):
    help = "Seed the catalog and default policy rules. Idempotent: creates what is missing, never overwrites."

    @transaction.atomic
    def handle(self, *args, **options) -> None:
        created: dict[str, int] = {}

        def count(kind: str, was_created: bool) -> None:
            created[kind] = created.get(kind, 0) + int(was_created)

        classes = {}
        for code, name, rank in MODEL_CLASSES:
            classes[code], c = ModelClass.objects.get_or_create(code=code, defaults={"name": name, "rank": rank})
            count("model classes", c)
        features = {}
        for code, name in FEATURES:
            features[code], c = Feature.objects.get_or_create(code=code, defaults={"name": name})
            count("features", c)
        tasks = {}
        for code, name, feature, unit in TASKS:
            tasks[code], c = Task.objects.get_or_create(
                code=code, defaults={"name": name, "feature": features[feature], "quota_unit": unit}
            )
            count("tasks", c)
        for provider, model, cls, price_in, price_out, context, max_out, priority in PROVIDER_MODELS:
            cached, write = CACHE_PRICES.get((provider, model), (None, None))
            _, c = ProviderModel.objects.get_or_create(
                provider=provider,
                model_name=model,
                defaults={
                    "model_class": classes[cls],
                    "input_price_per_mtok_micro_usd": price_in,
                    "output_price_per_mtok_micro_usd": price_out,
                    "cached_input_price_per_mtok_micro_usd": cached,
                    "cache_write_price_per_mtok_micro_usd": write,
                    "context_window": context,
                    "max_output_tokens": max_out,
                    "priority": priority,
                },
            )
            count("provider models", c)
        for source, kind, price, note in SEARCH_PRICES:
            _, c = SearchSourcePrice.objects.get_or_create(
                source=source, request_kind=kind, defaults={"micro_usd": price, "note": note})
            count("search prices", c)
        plans = {}
        for plan_code, (name, access) in PLANS.items():
            plans[plan_code], c = Plan.objects.get_or_create(code=plan_code, defaults={"name": name})
            count("plans", c)
            for task_code, class_codes in access.items():
                _, c = PlanFeature.objects.get_or_create(
                    plan=plans[plan_code], feature=features[TASK_FEATURE[task_code]]
                )
                count("plan features", c)
                row, c = PlanLLMAccess.objects.get_or_create(plan=plans[plan_code], task=tasks[task_code])
                if c:
                    row.model_classes.set([classes[k] for k in class_codes])
                count("plan access rows", c)
        for index, plan_code in enumerate(PLANS):
            for key, task_code, values in PLAN_RULES:
                task = tasks[task_code] if task_code else None
                if task_code and task_code not in PLANS[plan_code][1]:
                    continue
                c = self._seed_rule(plans[plan_code], task, key, values[index])
                count("policy rules", c)
        for plan_code, key, value, when_key, percent in THROTTLE_RULES:
            c = self._seed_rule(plans[plan_code], None, key, value, when_key, percent)
            count("policy rules", c)
        summary = ", ".join(f"{n} {kind}" for kind, n in created.items())
        total = sum(created.values())
        if options["verbosity"]:
            self.stdout.write(self.style.SUCCESS(f"Catalog seeded: created {summary}.") if total else
                              "Catalog already seeded: nothing to create.")

    def _seed_rule(self, plan: Plan, task: Task | None, key: str, value, when_key: str = "",
                   percent: int | None = None) -> bool:
        exists = PolicyRule.objects.filter(
            scope=PolicyRule.Scope.PLAN, plan=plan, task=task, key=key, when_quota_key=when_key,
            weekdays__isnull=True,
        ).exists()
        if exists:
            return False
        PolicyRule.objects.create(
            scope=PolicyRule.Scope.PLAN, plan=plan, task=task, key=key, value=validate_value(key, value),
            when_quota_key=when_key, when_usage_percent_gte=percent, seeded=True,
        )
        return True
