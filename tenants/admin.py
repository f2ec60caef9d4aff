"""Django Admin for who buys: users, tenants, ATI tokens and API keys.

Every write goes through `tenants.services`: issuing and revoking ATI tokens, signing a tenant up,
suspending / activating, signing a user out everywhere, and the change forms' plain edits and
deletes (`user_save`, `tenant_save`, `ati_token_save`, `*_delete`), which audit the change and drop
the cached identities of the tenants involved once the transaction commits. A password set here
(the user's "change password" page) ends the user's sessions like any password change.

These are the only admins of User, Tenant and ATIToken. Higher apps add inlines of their own rows to
them (metering: the policy-rule overrides) by extending `inlines` from their admin module; nobody
unregisters and re-registers them.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm, AdminUserCreationForm, UserChangeForm
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from catalog.models import Plan
from gateway_project.errors import GatewayError
from tenants import services
from tenants.audit import AuditEvent, AuditSource
from tenants.models import ApiKey, ATIToken, Tenant, User


def plan_choices(current: str | None = None) -> list[tuple[str, str]]:
    choices = [(plan.code, f"{plan.code} - {plan.name}" + ("" if plan.is_active else " (inactive)"))
               for plan in Plan.objects.order_by("code")]
    if current and current not in {code for code, _ in choices}:
        choices.append((current, f"{current} (no such plan!)"))
    return choices


def admin_change_link(obj, text: str | None = None):
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text or str(obj))


class PlanTierFilter(admin.SimpleListFilter):
    """Filter by plan code (choices from the catalog, not a scan of the filtered table)."""

    title = "plan"
    parameter_name = "plan"
    field_path = "plan_tier"

    def lookups(self, request, model_admin):
        return list(Plan.objects.order_by("code").values_list("code", "code"))

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.field_path: self.value()})
        return queryset


# ---------------------------------------------------------------------------------------------- users


class TenantOrStaffFormMixin:
    """The database requires a tenant for every user who is not staff; say so before it does."""

    def clean(self):
        cleaned = super().clean()
        tenant = cleaned.get("tenant") if "tenant" in self.fields else self.instance.tenant_id
        is_staff = cleaned.get("is_staff") if "is_staff" in self.fields else self.instance.is_staff
        is_superuser = cleaned.get("is_superuser") if "is_superuser" in self.fields else self.instance.is_superuser
        if not tenant and not is_staff and not is_superuser:
            raise ValidationError(
                "Pick the tenant this user belongs to. Only gateway operators (staff status) may have no tenant."
            )
        return cleaned


class GatewayUserCreationForm(TenantOrStaffFormMixin, AdminUserCreationForm):
    class Meta(AdminUserCreationForm.Meta):
        model = User
        fields = ("username",)


class GatewayUserChangeForm(TenantOrStaffFormMixin, UserChangeForm):
    class Meta(UserChangeForm.Meta):
        model = User
        fields = "__all__"


class GatewayPasswordChangeForm(AdminPasswordChangeForm):
    """The user's "change password" page saves through the user service (audited as user.password_set)."""

    def save(self, commit=True):
        user = super().save(commit=False)
        return services.user_save(user=user) if commit else user


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = GatewayUserChangeForm
    add_form = GatewayUserCreationForm
    change_password_form = GatewayPasswordChangeForm
    list_display = ["username", "email", "tenant", "role", "is_active", "is_staff", "is_superuser", "last_login"]
    list_filter = ["tenant", "role", "is_active", "is_staff", "is_superuser"]
    list_select_related = ["tenant"]
    search_fields = ["username", "email", "first_name", "last_name", "tenant__slug", "tenant__name"]
    autocomplete_fields = ["tenant"]
    actions = ["sign_out_everywhere"]
    fieldsets = [
        (None, {"fields": ["username", "password"]}),
        (
            "Tenant",
            {
                "fields": ["tenant", "role"],
                "description": "Tenant users inherit their tenant's plan. Tenant admins manage the tenant's users.",
            },
        ),
        ("Personal info", {"fields": ["first_name", "last_name", "email"]}),
        (
            "Permissions",
            {
                "fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"],
                "description": "Inactive users cannot call the gateway. Staff status is for gateway operators only.",
            },
        ),
        ("Important dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["username", "usable_password", "password1", "password2"]}),
        (
            "Tenant",
            {
                "classes": ["wide"],
                "fields": ["tenant", "role", "email", "is_staff"],
                "description": "Leave the tenant empty only for a gateway operator (tick staff status).",
            },
        ),
    ]

    # The admin site runs every view inside audit_context(actor=the staff user, source=ADMIN)
    # (adminconsole/sites.py), so the services below record who did it.
    def save_model(self, request, obj, form, change):
        services.user_save(user=obj)

    def delete_model(self, request, obj):
        services.user_delete(user=obj)

    def delete_queryset(self, request, queryset):
        for user in queryset.order_by("pk"):
            services.user_delete(user=user)

    def get_inlines(self, request, obj):
        # Inlines (e.g. metering's rule overrides) belong to a saved user: none on the add page.
        return [] if obj is None else super().get_inlines(request, obj)

    @admin.action(description="Sign selected users out everywhere (every token they hold stops working)",
                  permissions=["change"])
    def sign_out_everywhere(self, request, queryset):
        users = list(queryset.order_by("pk"))
        for user in users:
            services.user_sessions_revoke(user=user, actor=request.user, source=AuditSource.ADMIN)
        self.message_user(
            request, f"Signed {len(users)} user(s) out everywhere: {', '.join(u.username for u in users)}.",
            messages.SUCCESS,
        )


# -------------------------------------------------------------------------------------------- tenants


class TenantPlanFilter(PlanTierFilter):
    field_path = "signup_ati_token__plan_tier"


class UserInlineFormSet(BaseInlineFormSet):
    """The tenant page's user rows (role, active) are saved by the user service, audited."""

    def save_new(self, form, commit=True):  # pragma: no cover - the inline has no add row
        raise PermissionError("Users are added from the user admin or the tenant API.")

    def save_existing(self, form, obj, commit=True):
        return services.user_save(user=form.instance) if commit else form.instance


class TenantUserInline(admin.TabularInline):
    model = User
    formset = UserInlineFormSet
    fk_name = "tenant"
    fields = ["username", "email", "role", "is_active", "last_login"]
    readonly_fields = ["username", "email", "last_login"]
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "users (add users from the user admin or the tenant API)"

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class TenantATITokenInline(admin.TabularInline):
    model = ATIToken
    fk_name = "tenant"
    fields = ["id", "plan_tier", "status", "expires_at", "used_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "ATI tokens (the token's plan tier is this tenant's plan; edit it on the token)"

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class TenantAddForm(forms.ModelForm):
    """Adding a tenant is the signup: the service creates the tenant, claims the token and makes its admin."""

    plan = forms.ChoiceField(
        required=False,
        help_text="Issue a new ATI token on this plan for the tenant. Or leave empty and paste an unused token.",
    )
    ati_secret = forms.CharField(
        required=False, label="ATI token secret", strip=True,
        help_text="The secret of an unused ATI token (shown once when it was issued).",
    )
    admin_username = forms.CharField(max_length=150, help_text="The tenant's first admin.")
    admin_email = forms.EmailField()
    admin_password = forms.CharField(widget=forms.PasswordInput(render_value=False), strip=False)

    class Meta:
        model = Tenant
        fields = ["name"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["plan"].choices = [("", "---------")] + plan_choices()
        self.signed_up: Tenant | None = None

    def clean(self):
        cleaned = super().clean()
        if bool(cleaned.get("plan")) == bool(cleaned.get("ati_secret")):
            raise ValidationError("Choose a plan (a new ATI token is issued) or paste an unused ATI token secret.")
        return cleaned

    def _post_clean(self):
        super()._post_clean()
        if self.errors:
            return
        data = self.cleaned_data
        try:
            # A savepoint: a refused signup also drops the token issued for it.
            with transaction.atomic():
                secret = data["ati_secret"]
                if data["plan"]:
                    note = f"Admin signup of {data['name']}"
                    secret = services.ati_token_issue(plan_code=data["plan"], note=note).secret
                self.signed_up, _ = services.tenant_signup(
                    ati_secret=secret, tenant_name=data["name"], username=data["admin_username"],
                    email=data["admin_email"], password=data["admin_password"],
                )
        except GatewayError as exc:
            self.add_error(None, exc.message)


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "status", "plan", "enforcement", "user_count", "created_at"]
    list_filter = ["status", TenantPlanFilter, "enforcement_mode"]
    list_select_related = ["signup_ati_token"]
    search_fields = ["name", "slug"]
    date_hierarchy = "created_at"
    inlines = [TenantUserInline, TenantATITokenInline]
    actions = ["suspend_tenants", "activate_tenants"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "status"]}),
        (
            "Plan",
            {
                "fields": ["plan", "signup_ati_token"],
                "description": "A tenant's plan is its ATI token's plan tier: change the plan on the token.",
            },
        ),
        ("Enforcement", {"fields": ["enforcement_mode"]}),
        ("Dates", {"fields": ["created_at"]}),
    ]
    add_fieldsets = [
        (None, {"fields": ["name"]}),
        ("Plan", {"fields": ["plan", "ati_secret"]}),
        ("First tenant admin", {"fields": ["admin_username", "admin_email", "admin_password"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_user_count=Count("users", distinct=True))

    # The add page is the signup flow; the change page edits the tenant.
    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = TenantAddForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["plan", "signup_ati_token", "created_at"]

    def get_inlines(self, request, obj):
        return [] if obj is None else super().get_inlines(request, obj)

    def save_form(self, request, form, change):
        if not change:
            return form.signed_up
        return super().save_form(request, form, change)

    def save_model(self, request, obj, form, change):
        if not change:
            messages.success(
                request,
                f"Tenant '{obj.slug}' signed up on plan {obj.plan_code} with admin "
                f"'{form.cleaned_data['admin_username']}'.",
            )
            return
        services.tenant_save(tenant=obj)

    def save_related(self, request, form, formsets, change):
        if not change:
            return
        super().save_related(request, form, formsets, change)  # the inlines' formsets save through services

    def delete_model(self, request, obj):
        services.tenant_delete(tenant=obj)

    def delete_queryset(self, request, queryset):
        for tenant in queryset.order_by("pk"):
            services.tenant_delete(tenant=tenant)

    @admin.display(description="plan", ordering="signup_ati_token__plan_tier")
    def plan(self, obj: Tenant):
        return admin_change_link(obj.signup_ati_token, obj.signup_ati_token.plan_tier)

    @admin.display(description="enforcement mode", ordering="enforcement_mode")
    def enforcement(self, obj: Tenant) -> str:
        return obj.enforcement_mode or f"inherit ({settings.GATEWAY_ENFORCEMENT_MODE})"

    @admin.display(description="users", ordering="_user_count")
    def user_count(self, obj: Tenant) -> int:
        return obj._user_count

    def _set_status(self, request, queryset, service, verb: str) -> None:
        done = []
        for slug in queryset.values_list("slug", flat=True):
            try:
                service(slug=slug)
            except GatewayError as exc:
                self.message_user(request, f"{slug}: {exc.message}", messages.ERROR)
            else:
                done.append(slug)
        if done:
            self.message_user(request, f"{verb} {len(done)} tenant(s): {', '.join(done)}.", messages.SUCCESS)

    @admin.action(description="Suspend selected tenants (their users are refused at once)", permissions=["change"])
    def suspend_tenants(self, request, queryset):
        self._set_status(request, queryset, services.tenant_suspend, "Suspended")

    @admin.action(description="Activate selected tenants", permissions=["change"])
    def activate_tenants(self, request, queryset):
        self._set_status(request, queryset, services.tenant_activate, "Activated")


# ----------------------------------------------------------------------------------------- ATI tokens


class UsedFilter(admin.SimpleListFilter):
    title = "used"
    parameter_name = "used"

    def lookups(self, request, model_admin):
        return [("yes", "Used by a tenant"), ("no", "Not used yet")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(tenant__isnull=self.value() == "no")
        return queryset


class ExpiredFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expired"

    def lookups(self, request, model_admin):
        return [("yes", "Expired"), ("no", "Not expired")]

    def queryset(self, request, queryset):
        expired = Q(expires_at__isnull=False, expires_at__lte=timezone.now())
        if self.value() == "yes":
            return queryset.filter(expired)
        if self.value() == "no":
            return queryset.exclude(expired)
        return queryset


class ATITokenIssueForm(forms.ModelForm):
    """Issuing goes through `services.ati_token_issue`: the secret is generated there and shown once."""

    plan_tier = forms.ChoiceField(label="Plan", help_text="The plan of the tenant that signs up with this token.")
    expires_days = forms.IntegerField(
        required=False, min_value=1, help_text="Days until the token expires. Empty = never expires."
    )

    class Meta:
        model = ATIToken
        fields = ["plan_tier", "note"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["plan_tier"].choices = plan_choices()


class ATITokenChangeForm(forms.ModelForm):
    plan_tier = forms.ChoiceField(
        label="Plan",
        help_text="The tenant's plan. Changing it re-tiers the tenant; it takes effect on the next call.",
    )

    class Meta:
        model = ATIToken
        fields = ["plan_tier", "status", "expires_at", "note"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["plan_tier"].choices = plan_choices(current=self.instance.plan_tier)


@admin.register(ATIToken)
class ATITokenAdmin(admin.ModelAdmin):
    list_display = ["id", "plan_tier", "status", "expiry", "tenant", "used_at", "created_at", "note"]
    list_filter = ["status", PlanTierFilter, UsedFilter, ExpiredFilter]
    list_select_related = ["tenant"]
    search_fields = ["id", "note", "tenant__slug", "tenant__name"]
    date_hierarchy = "created_at"
    actions = ["revoke_tokens"]
    form = ATITokenChangeForm
    add_form = ATITokenIssueForm
    # secret_hash is never shown: it is in no form and no read-only field.
    fieldsets = [
        (None, {"fields": ["id", "plan_tier", "status", "expires_at", "note"]}),
        ("Use", {"fields": ["tenant", "used_at", "created_at"]}),
    ]
    add_fieldsets = [(None, {"fields": ["plan_tier", "expires_days", "note"]})]

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["id", "tenant", "used_at", "created_at"]

    def save_model(self, request, obj, form, change):
        if change:
            previous_plan = form.initial.get("plan_tier")
            services.ati_token_save(token=obj)
            if obj.tenant_id and previous_plan != obj.plan_tier:
                messages.info(
                    request,
                    f"Tenant '{obj.tenant}' moves from plan {previous_plan} to {obj.plan_tier} on its next call.",
                )
            return
        issued = services.ati_token_issue(
            plan_code=form.cleaned_data["plan_tier"],
            expires_days=form.cleaned_data.get("expires_days"),
            note=form.cleaned_data.get("note", ""),
        )
        # The admin goes on with the row the service created (for its log entry and redirect).
        obj.pk = issued.token.pk
        obj.refresh_from_db()
        obj._state.adding = False
        messages.success(
            request,
            f"ATI token {issued.token.pk} issued for plan {issued.token.plan_tier}. Its secret is shown only "
            f"this once; copy it now and hand it to the tenant admin: {issued.secret}",
        )

    def delete_model(self, request, obj):
        services.ati_token_delete(token=obj)

    def delete_queryset(self, request, queryset):
        for token in queryset.order_by("pk"):
            services.ati_token_delete(token=token)

    @admin.display(description="expires", ordering="expires_at")
    def expiry(self, obj: ATIToken) -> str:
        if obj.expires_at is None:
            return "never"
        text = timezone.localtime(obj.expires_at).strftime("%Y-%m-%d %H:%M")
        return f"{text} (expired)" if obj.is_expired() else text

    @admin.action(description="Revoke selected ATI tokens (their tenants are refused at once)", permissions=["change"])
    def revoke_tokens(self, request, queryset):
        revoked = []
        for ati_id in queryset.exclude(status=ATIToken.Status.REVOKED).values_list("pk", flat=True):
            try:
                services.ati_token_revoke(ati_id=ati_id)
            except GatewayError as exc:
                self.message_user(request, f"{ati_id}: {exc.message}", messages.ERROR)
            else:
                revoked.append(ati_id)
        if revoked:
            self.message_user(request, f"Revoked {len(revoked)} ATI token(s): {', '.join(revoked)}.", messages.SUCCESS)
        else:
            self.message_user(request, "No active token among the selection: nothing to revoke.", messages.WARNING)


# ----------------------------------------------------------------------------------------- API keys


class ApiKeyCreateForm(forms.ModelForm):
    """Creating goes through `services.api_key_create`: the key is generated there and shown once."""

    allowed_tasks = forms.CharField(required=False, help_text="Comma-separated task codes; empty = every task.")
    allowed_model_classes = forms.CharField(required=False,
                                            help_text="Comma-separated model class codes; empty = the plan's.")

    class Meta:
        model = ApiKey
        fields = ["tenant", "user", "name", "allowed_tasks", "allowed_model_classes", "expires_at", "limits"]


class ApiKeyChangeForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["limits"]


def _codes(value: str) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created, given a new budget and revoked through the services (audited, effective on the
    key's next request everywhere); the secret is in the success message once and never stored."""

    list_display = ["name", "prefix", "tenant", "user", "status", "expires_at", "last_used_at", "created_at"]
    list_filter = ["revoked_at"]
    list_select_related = ["tenant", "user"]
    search_fields = ["name", "public_id", "tenant__slug", "user__username"]
    actions = ["revoke_keys"]
    form = ApiKeyChangeForm
    readonly_fields = ["tenant", "user", "name", "prefix", "allowed_tasks", "allowed_model_classes", "expires_at",
                       "revoked_at", "last_used_at", "created_by", "created_at"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def get_fields(self, request, obj=None):
        if obj is None:
            return ApiKeyCreateForm._meta.fields
        return [*self.readonly_fields, "limits"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the ledger points at keys: revoke instead

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            services.api_key_limits_set(api_key=obj, limits=data.get("limits") or {})
            return
        try:
            issued = services.api_key_create(
                tenant=data["tenant"], user=data.get("user"), name=data["name"],
                allowed_tasks=_codes(data.get("allowed_tasks")),
                allowed_model_classes=_codes(data.get("allowed_model_classes")),
                expires_at=data.get("expires_at"), limits=data.get("limits") or {}, actor=request.user,
            )
        except GatewayError as exc:
            raise ValidationError(exc.message) from None
        obj.pk = issued.api_key.pk
        obj.refresh_from_db()
        obj._state.adding = False
        messages.success(request, f"API key {issued.api_key.prefix} created. It is shown only this once; copy it "
                                  f"now: {issued.secret}")

    @admin.action(description="Revoke selected API keys (refused from their next request on)",
                  permissions=["change"])
    def revoke_keys(self, request, queryset):
        keys = list(queryset.filter(revoked_at__isnull=True).order_by("pk"))
        for key in keys:
            services.api_key_revoke(api_key=key, actor=request.user)
        self.message_user(request, f"Revoked {len(keys)} API key(s).", messages.SUCCESS if keys else messages.WARNING)


# ------------------------------------------------------------------------------------- audit trail


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The trail is only ever appended to (by the services): nobody adds, edits or deletes it here."""

    list_display = ["created_at", "actor_label", "source", "action", "object_type", "object_id", "tenant"]
    list_filter = ["source", "action", "object_type"]
    list_select_related = ["tenant"]
    search_fields = ["=object_id", "=tenant__slug", "=actor_label", "action"]
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
