"""Read-side catalog lookups, cached in the shared cache and invalidated by a generation bump."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from catalog import pricing
from catalog.models import ModelClass, PlanFeature, PlanLLMAccess, ProviderModel, Task
from gateway_project.memo import GenerationCache

T = TypeVar("T")

catalog_cache = GenerationCache("catalog")


def catalog_cache_invalidate() -> None:
    catalog_cache.invalidate()


def _cached(name: str, build: Callable[[], T]) -> T:
    return catalog_cache.get(name, build)


@dataclass(frozen=True)
class TaskInfo:
    id: int
    code: str
    feature_id: int
    feature_code: str


@dataclass(frozen=True)
class PlanEntitlements:
    feature_ids: frozenset[int]
    # task code -> allowed model class codes, cheapest (lowest rank) first
    model_classes: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class ModelInfo:
    id: int
    provider: str
    model_name: str
    model_class: str
    class_rank: int
    input_price: int | None
    output_price: int | None
    context_window: int
    max_output_tokens: int
    priority: int
    cached_input_price: int | None = None  # NULL: billed at the input price (catalog/pricing.py)
    cache_write_price: int | None = None

    @property
    def is_priced(self) -> bool:
        return self.input_price is not None and self.output_price is not None

    def cost_micro_usd(self, *, tokens_in: int, tokens_out: int, tokens_cached_in: int = 0,
                       tokens_cache_write: int = 0) -> int:
        """Integer micro-USD by the one price rule (catalog/pricing.py), rounded up."""
        return pricing.cost_micro_usd(
            tokens_in=tokens_in, tokens_out=tokens_out, tokens_cached_in=tokens_cached_in,
            tokens_cache_write=tokens_cache_write, input_price=self.input_price, output_price=self.output_price,
            cached_input_price=self.cached_input_price, cache_write_price=self.cache_write_price)

    @property
    def worst_input_price(self) -> int:
        """The most one prompt token can cost here (a cache write can cost more than plain input)."""
        return pricing.worst_input_price(input_price=self.input_price, cached_input_price=self.cached_input_price,
                                         cache_write_price=self.cache_write_price)

    def worst_cost_micro_usd(self, *, tokens_in: int, tokens_out: int) -> int:
        """The most a call with this many prompt and output tokens can cost: the worst case a hold
        must cover, whatever part of the prompt the provider reads from or writes to its cache."""
        numerator = tokens_in * self.worst_input_price + tokens_out * (self.output_price or 0)
        return -(-numerator // pricing.MTOK)


def _tasks() -> dict[str, TaskInfo]:
    def build() -> dict[str, TaskInfo]:
        return {
            t.code: TaskInfo(id=t.pk, code=t.code, feature_id=t.feature_id, feature_code=t.feature.code)
            for t in Task.objects.select_related("feature")
        }

    return _cached("tasks", build)


def tasks_cached() -> dict[str, TaskInfo] | None:
    """Every task by code if cached, else None: no database, safe on an event loop."""
    return catalog_cache.peek("tasks")


def task_get(code: str) -> TaskInfo | None:
    return _tasks().get(code)


def tasks_all() -> list[TaskInfo]:
    return sorted(_tasks().values(), key=lambda t: t.code)


def plan_entitlements(plan_id: int) -> PlanEntitlements:
    def build() -> PlanEntitlements:
        features = frozenset(PlanFeature.objects.filter(plan_id=plan_id).values_list("feature_id", flat=True))
        classes: dict[str, tuple[str, ...]] = {}
        for access in PlanLLMAccess.objects.filter(plan_id=plan_id).select_related("task").prefetch_related(
            "model_classes"
        ):
            ordered = sorted(access.model_classes.all(), key=lambda mc: mc.rank)
            classes[access.task.code] = tuple(mc.code for mc in ordered)
        return PlanEntitlements(feature_ids=features, model_classes=classes)

    return _cached(f"plan:{plan_id}", build)


def plan_entitlements_cached(plan_id: int) -> PlanEntitlements | None:
    """`plan_entitlements` if cached, else None: no database, safe on an event loop."""
    return catalog_cache.peek(f"plan:{plan_id}")


def provider_models_cached() -> list[ModelInfo] | None:
    """`provider_models_active` if cached, else None: no database, safe on an event loop."""
    return catalog_cache.peek("provider-models")


def provider_models_active() -> list[ModelInfo]:
    def build() -> list[ModelInfo]:
        return [
            ModelInfo(
                id=m.pk,
                provider=m.provider,
                model_name=m.model_name,
                model_class=m.model_class.code,
                class_rank=m.model_class.rank,
                input_price=m.input_price_per_mtok_micro_usd,
                output_price=m.output_price_per_mtok_micro_usd,
                context_window=m.context_window,
                max_output_tokens=m.max_output_tokens,
                priority=m.priority,
                cached_input_price=m.cached_input_price_per_mtok_micro_usd,
                cache_write_price=m.cache_write_price_per_mtok_micro_usd,
            )
            for m in ProviderModel.objects.filter(is_active=True).select_related("model_class")
        ]

    return _cached("provider-models", build)


def model_class_codes() -> tuple[str, ...]:
    return _cached("model-classes", lambda: tuple(ModelClass.objects.order_by("rank").values_list("code", flat=True)))
