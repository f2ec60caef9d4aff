"""What is sold: plans, features, tasks, model classes and the provider models behind them."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from catalog import pricing


class ModelClass(models.Model):
    """A capability tier (BASE_S < BASE_M < PRO_M < PRO_L < ADVANCED); plans grant classes, not models."""

    code = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    rank = models.PositiveSmallIntegerField(unique=True, help_text="Higher rank = more capable and costly.")
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["rank"]
        verbose_name_plural = "model classes"

    def __str__(self) -> str:
        return self.code


class Feature(models.Model):
    code = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Task(models.Model):
    class Code(models.TextChoices):
        PRIOR_ART = "LLM1_PRIOR_ART", "Prior-art search"
        DRAFT = "LLM2_DRAFT", "Patent drafting"
        DIAGRAM = "LLM3_DIAGRAM", "Diagram generation"

    class QuotaUnit(models.TextChoices):
        TOKENS = "TOKENS", "Tokens"
        API_CALLS = "API_CALLS", "API calls"
        REQUESTS = "REQUESTS", "Requests"

    code = models.CharField(max_length=32, unique=True, choices=Code.choices)
    name = models.CharField(max_length=100)
    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="tasks")
    quota_unit = models.CharField(max_length=16, choices=QuotaUnit.choices, default=QuotaUnit.TOKENS)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Plan(models.Model):
    code = models.CharField(max_length=32, unique=True, help_text="Named by ATIToken.plan_tier, e.g. FREE, PRO.")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    features = models.ManyToManyField(Feature, through="PlanFeature", related_name="plans", blank=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class PlanFeature(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="plan_features")
    feature = models.ForeignKey(Feature, on_delete=models.CASCADE, related_name="plan_features")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["plan", "feature"], name="uniq_plan_feature")]

    def __str__(self) -> str:
        return f"{self.plan} / {self.feature}"


class PlanLLMAccess(models.Model):
    """Plan x task -> the model classes a tenant on that plan may use for that task."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="llm_access")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="plan_access")
    model_classes = models.ManyToManyField(ModelClass, related_name="plan_access")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["plan", "task"], name="uniq_plan_task_access")]
        verbose_name = "plan LLM access"
        verbose_name_plural = "plan LLM access"

    def __str__(self) -> str:
        return f"{self.plan} / {self.task}"


class ProviderModel(models.Model):
    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        GEMINI = "gemini", "Google Gemini"
        GROK = "grok", "xAI Grok"
        ANTHROPIC = "anthropic", "Anthropic"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible server"
        OFFLINE = "offline", "Offline (no network)"

    provider = models.CharField(max_length=32, choices=Provider.choices)
    model_name = models.CharField(max_length=128)
    model_class = models.ForeignKey(ModelClass, on_delete=models.PROTECT, related_name="provider_models")
    # Integer micro-USD per one million tokens: money never touches floats.
    input_price_per_mtok_micro_usd = models.BigIntegerField(null=True, blank=True)
    output_price_per_mtok_micro_usd = models.BigIntegerField(null=True, blank=True)
    # Prompt-cache prices, same unit (catalog/pricing.py): NULL = no discount or surcharge, those
    # tokens are billed at the input price.
    cached_input_price_per_mtok_micro_usd = models.BigIntegerField(
        null=True, blank=True, help_text="Prompt tokens read from the provider's cache (NULL: the input price).")
    cache_write_price_per_mtok_micro_usd = models.BigIntegerField(
        null=True, blank=True, help_text="Prompt tokens written to the provider's cache (NULL: the input price).")
    context_window = models.PositiveIntegerField(default=128_000)
    max_output_tokens = models.PositiveIntegerField(default=8_192)
    priority = models.IntegerField(default=100, help_text="Lower runs first among equals.")
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["model_class__rank", "priority", "provider", "model_name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model_name"], name="uniq_provider_model"),
            models.CheckConstraint(
                condition=Q(input_price_per_mtok_micro_usd__isnull=True) | Q(input_price_per_mtok_micro_usd__gte=0),
                name="provider_model_input_price_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(output_price_per_mtok_micro_usd__isnull=True)
                | Q(output_price_per_mtok_micro_usd__gte=0),
                name="provider_model_output_price_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(cached_input_price_per_mtok_micro_usd__isnull=True)
                | Q(cached_input_price_per_mtok_micro_usd__gte=0),
                name="provider_model_cached_price_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(cache_write_price_per_mtok_micro_usd__isnull=True)
                | Q(cache_write_price_per_mtok_micro_usd__gte=0),
                name="provider_model_cache_write_price_non_negative",
            ),
        ]
        indexes = [models.Index(fields=["model_class", "is_active"], name="provmodel_class_active")]

    def __str__(self) -> str:
        return f"{self.provider}:{self.model_name}"

    @property
    def is_priced(self) -> bool:
        return self.input_price_per_mtok_micro_usd is not None and self.output_price_per_mtok_micro_usd is not None

    def cost_micro_usd(self, *, tokens_in: int, tokens_out: int, tokens_cached_in: int = 0,
                       tokens_cache_write: int = 0) -> int:
        """Integer cost by the one price rule (catalog/pricing.py), rounded up to the next micro-USD."""
        return pricing.cost_micro_usd(
            tokens_in=tokens_in, tokens_out=tokens_out, tokens_cached_in=tokens_cached_in,
            tokens_cache_write=tokens_cache_write, input_price=self.input_price_per_mtok_micro_usd,
            output_price=self.output_price_per_mtok_micro_usd,
            cached_input_price=self.cached_input_price_per_mtok_micro_usd,
            cache_write_price=self.cache_write_price_per_mtok_micro_usd)


class SearchSourcePrice(models.Model):
    """What one request to a prior-art search source costs, by request kind, in integer micro-USD.

    Each external request of a prior-art call adds its price to the call's cost (the ledger row's
    cost = tokens cost + search fees). A source/kind without a row is free (0), as ODP and OPS are
    under their fair-use terms; OpenAlex meters in money per request kind.
    """

    class Source(models.TextChoices):
        USPTO_ODP = "uspto_odp", "USPTO Open Data Portal"
        EPO_OPS = "epo_ops", "EPO Open Patent Services"
        OPENALEX = "openalex", "OpenAlex"

    source = models.CharField(max_length=32, choices=Source.choices)
    request_kind = models.CharField(
        max_length=32, help_text="e.g. search, list, singleton (OpenAlex tiers), token (OPS OAuth).")
    micro_usd = models.BigIntegerField(default=0, help_text="Price of one request, integer micro-USD.")
    note = models.CharField(max_length=200, blank=True, help_text="Where the price comes from.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["source", "request_kind"]
        constraints = [
            models.UniqueConstraint(fields=["source", "request_kind"], name="uniq_search_source_price"),
            models.CheckConstraint(condition=Q(micro_usd__gte=0), name="search_source_price_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.source}/{self.request_kind}: {self.micro_usd} micro-USD"
