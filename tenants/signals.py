"""Identity-cache invalidation for every change to the rows an identity is resolved from.

The services invalidate explicitly, but rows also change outside them (Django admin, shell,
other apps saving a model): without these receivers a suspended tenant, a revoked ATI token or a
deactivated / moved / deleted user would keep its cached identity until the cache entry expired.
(`QuerySet.update()` sends no signals; code that uses it must invalidate itself.)
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from tenants.models import ApiKey, ATIToken, Tenant, User
from tenants.selectors import identity_cache_invalidate


def _invalidate_on_commit(*tenant_ids: int | None, using: str) -> None:
    for tenant_id in {t for t in tenant_ids if t is not None}:
        transaction.on_commit(lambda tenant_id=tenant_id: identity_cache_invalidate(tenant_id=tenant_id), using=using)


@receiver(pre_save, sender=User)
def _user_remember_previous_tenant(sender, instance: User, using: str, **kwargs) -> None:
    # A user moved to another tenant must lose the identity cached under the old tenant.
    if instance.pk is not None and not instance._state.adding:
        instance._identity_previous_tenant_id = (
            User.objects.using(using).filter(pk=instance.pk).values_list("tenant_id", flat=True).first()
        )


@receiver(post_save, sender=User)
def _user_saved(sender, instance: User, created: bool, using: str, **kwargs) -> None:
    if not created:
        _invalidate_on_commit(
            instance.tenant_id, getattr(instance, "_identity_previous_tenant_id", None), using=using
        )


@receiver(post_delete, sender=User)
def _user_deleted(sender, instance: User, using: str, **kwargs) -> None:
    _invalidate_on_commit(instance.tenant_id, using=using)


@receiver(post_save, sender=Tenant)
@receiver(post_delete, sender=Tenant)
def _tenant_changed(sender, instance: Tenant, using: str, created: bool = False, **kwargs) -> None:
    if not created:
        _invalidate_on_commit(instance.pk, using=using)


@receiver(post_save, sender=ATIToken)
@receiver(post_delete, sender=ATIToken)
def _ati_token_changed(sender, instance: ATIToken, using: str, **kwargs) -> None:
    _invalidate_on_commit(instance.tenant_id, using=using)


@receiver(post_save, sender=ApiKey)
@receiver(post_delete, sender=ApiKey)
def _api_key_changed(sender, instance: ApiKey, using: str, **kwargs) -> None:
    # A revoked, rotated, narrowed or deleted key must stop (or change) on its next request everywhere.
    _invalidate_on_commit(instance.tenant_id, using=using)
