"""Django Admin for what is sold: model classes, features, tasks, plans and provider models.

One admin per model. metering/admin.py adds a PolicyRule inline to the Plan admin (rules live above
the catalog). Every edit is audited through catalog.changes.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db import transaction
from django.db.models import Count, Q
from django.utils.html import format_html_join

from catalog.changes import catalog_change_record, catalog_row_snapshot
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
from catalog.selectors import catalog_cache_invalidate


def _catalog_cache_invalidate() -> None:
    catalog_cache_invalidate()


class CatalogCacheAdminMixin:
    """Every write through the admin (forms, inlines, list_editable, deletes) drops the cached catalog on
    commit and is reported to the audit log (through catalog.changes: the catalog may not import it)
    as `<object_type>.create|update|delete`, with the fields it changed."""

    def _object_type(self) -> str:
        return self.model._meta.model_name

    def save_model(self, request, obj, form, change):
        stored = type(obj)._default_manager.filter(pk=obj.pk).first() if change else None
        before = catalog_row_snapshot(stored) if stored is not None else None
        super().save_model(request, obj, form, change)
        catalog_change_record(action=f"{self._object_type()}.{'update' if before is not None else 'create'}",
                              object_type=self._object_type(), object_id=obj.pk, before=before,
                              after=catalog_row_snapshot(obj))
        transaction.on_commit(_catalog_cache_invalidate)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        transaction.on_commit(_catalog_cache_invalidate)

    def delete_model(self, request, obj):
        pk, before = obj.pk, catalog_row_snapshot(obj)
        super().delete_model(request, obj)
        catalog_change_record(action=f"{self._object_type()}.delete", object_type=self._object_type(),
                              object_id=pk, before=before, after=None)
        transaction.on_commit(_catalog_cache_invalidate)

    def delete_queryset(self, request, queryset):
        gone = [(obj.pk, catalog_row_snapshot(obj)) for obj in queryset]
        super().delete_queryset(request, queryset)
        for pk, before in gone:
            catalog_change_record(action=f"{self._object_type()}.delete", object_type=self._object_type(),
                                  object_id=pk, before=before, after=None)
        transaction.on_commit(_catalog_cache_invalidate)


def plan_access_snapshot(plan: Plan) -> dict:
    """A plan's features and, per task, its model classes (what the plan's inlines edit)."""
    access = {a.task.code: sorted(mc.code for mc in a.model_classes.all())
              for a in PlanLLMAccess.objects.filter(plan=plan).select_related("task").prefetch_related("model_classes")}
    return {"features": sorted(PlanFeature.objects.filter(plan=plan).values_list("feature__code", flat=True)),
            "access": {code: access[code] for code in sorted(access) if access[code]}}


def format_micro_usd_per_mtok(value: int | None) -> str:
    """Integer micro-USD per 1M tokens -> "$2.50 / 1M"; an unpriced model says so loudly."""
    if value is None:
        return "NOT PRICED"
    dollars, micro = divmod(value, 1_000_000)
    cents_and_below = f"{micro:06d}".rstrip("0").ljust(2, "0")
    return f"${dollars:,}.{cents_and_below} / 1M"


@admin.register(ModelClass)
class ModelClassAdmin(CatalogCacheAdminMixin, admin.ModelAdmin):
    list_display = ["code", "name", "rank", "active_provider_models", "description"]
    search_fields = ["code", "name"]
    ordering = ["rank"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(_active_models=Count("provider_models", filter=Q(provider_models__is_active=True)))
        )

    @admin.display(description="active provider models", ordering="_active_models")
    def active_provider_models(self, obj: ModelClass) -> int:
        return obj._active_models


class TaskInline(admin.TabularInline):
    model = Task
    fields = ["code", "name", "quota_unit"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Feature)
class FeatureAdmin(CatalogCacheAdminMixin, admin.ModelAdmin):
    list_display = ["code", "name", "task_codes", "description"]
    search_fields = ["code", "name"]
    inlines = [TaskInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("tasks")

    @admin.display(description="tasks")
    def task_codes(self, obj: Feature) -> str:
        return ", ".join(task.code for task in obj.tasks.all()) or "-"


@admin.register(Task)
class TaskAdmin(CatalogCacheAdminMixin, admin.ModelAdmin):
    list_display = ["code", "name", "feature", "quota_unit"]
    list_filter = ["feature", "quota_unit"]
    list_select_related = ["feature"]
    search_fields = ["code", "name", "feature__code"]


class PlanFeatureInline(admin.TabularInline):
    model = PlanFeature
    extra = 0
    verbose_name = "feature"
    verbose_name_plural = "features included in this plan"


class PlanLLMAccessInline(admin.TabularInline):
    model = PlanLLMAccess
    extra = 0
    fields = ["task", "model_classes"]
    verbose_name = "task access"
    verbose_name_plural = "task access (which model classes each task may use on this plan)"

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "model_classes":
            kwargs["widget"] = forms.CheckboxSelectMultiple
            kwargs["queryset"] = ModelClass.objects.order_by("rank")
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("task").prefetch_related("model_classes")


@admin.register(Plan)
class PlanAdmin(CatalogCacheAdminMixin, admin.ModelAdmin):
    list_display = ["code", "name", "is_active", "feature_codes", "task_access"]
    list_filter = ["is_active"]
    search_fields = ["code", "name"]
    # The only admin of Plan. metering/admin.py adds the plan's policy-rule inline to `inlines` (rules
    # live above the catalog); nothing re-registers this admin.
    inlines = [PlanFeatureInline, PlanLLMAccessInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related(
            "features", "llm_access__task", "llm_access__model_classes"
        )

    def save_related(self, request, form, formsets, change):
        # The features and task access inlines: one plan.access_update event with what changed.
        before = plan_access_snapshot(form.instance) if change else None
        super().save_related(request, form, formsets, change)
        after = plan_access_snapshot(form.instance)
        if before != after and (before is not None or after["features"] or after["access"]):
            catalog_change_record(action="plan.access_update", object_type="plan", object_id=form.instance.pk,
                                  before=before, after=after)

    @admin.display(description="features")
    def feature_codes(self, obj: Plan) -> str:
        return ", ".join(feature.code for feature in obj.features.all()) or "-"

    @admin.display(description="task -> model classes")
    def task_access(self, obj: Plan):
        rows = [
            (access.task.code, ", ".join(mc.code for mc in sorted(access.model_classes.all(), key=lambda m: m.rank)))
            for access in obj.llm_access.all()
        ]
        if not rows:
            return "-"
        return format_html_join("", "<div>{}: {}</div>", rows)


class PricedFilter(admin.SimpleListFilter):
    title = "price"
    parameter_name = "priced"

    def lookups(self, request, model_admin):
        return [("yes", "Priced"), ("no", "Not priced (calls refused or flagged)")]

    def queryset(self, request, queryset):
        unpriced = Q(input_price_per_mtok_micro_usd__isnull=True) | Q(output_price_per_mtok_micro_usd__isnull=True)
        if self.value() == "yes":
            return queryset.exclude(unpriced)
        if self.value() == "no":
            return queryset.filter(unpriced)
        return queryset


@admin.register(ProviderModel)
class ProviderModelAdmin(CatalogCacheAdminMixin, admin.ModelAdmin):
    list_display = [
        "model_name",
        "provider",
        "model_class",
        "input_price",
        "output_price",
        "context_window",
        "max_output_tokens",
        "priority",
        "is_active",
    ]
    list_display_links = ["model_name"]
    list_editable = ["priority", "is_active"]
    list_filter = ["provider", "model_class", "is_active", PricedFilter]
    list_select_related = ["model_class"]
    search_fields = ["model_name", "provider", "model_class__code"]
    fieldsets = [
        (None, {"fields": ["provider", "model_name", "model_class", "priority", "is_active"]}),
        (
            "Prices (integer micro-USD per 1 million tokens; 1 USD = 1,000,000)",
            {
                "fields": ["input_price_per_mtok_micro_usd", "output_price_per_mtok_micro_usd"],
                "description": "Leave empty only for a model that must not run: an unpriced call is never free.",
            },
        ),
        ("Limits", {"fields": ["context_window", "max_output_tokens"]}),
    ]

    @admin.display(description="input price", ordering="input_price_per_mtok_micro_usd")
    def input_price(self, obj: ProviderModel) -> str:
        return format_micro_usd_per_mtok(obj.input_price_per_mtok_micro_usd)

    @admin.display(description="output price", ordering="output_price_per_mtok_micro_usd")
    def output_price(self, obj: ProviderModel) -> str:
        return format_micro_usd_per_mtok(obj.output_price_per_mtok_micro_usd)


@admin.register(SearchSourcePrice)
class SearchSourcePriceAdmin(CatalogCacheAdminMixin, admin.ModelAdmin):
    """Prior-art search fees: each external request of a call adds its price to the call's cost."""

    list_display = ("source", "request_kind", "micro_usd", "note", "updated_at")
    list_editable = ("micro_usd",)
    list_filter = ("source",)
