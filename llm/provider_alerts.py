"""Telling super admins that a provider refused the platform's credentials.

A 401 / 402 / 403 from a provider is our misconfiguration (a revoked or mistyped key, an exhausted
account, a model the key may not use), not the caller's: the router falls back and opens that
model's breaker, and this module makes sure a person hears about it. Once per model per
PROVIDER_ALERT_COOLDOWN_SECONDS (default one hour), across every gateway process (the claim is a
`cache.add` on the shared cache):

* an ERROR in the server log (logger `gateway.providers`), with the provider's scrubbed text;
* an email to every active super admin with an address, sent by a Celery task
  (`llm.tasks.provider_alert_notify`): with a broker, by a worker; in the embedded mode (Celery
  eager), on a background thread, never inside the call that hit the error.

There is no in-app record: in-app notifications belong to a tenant, and super admins have none.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import connections

from catalog.selectors import ModelInfo
from llm.providers.base import ProviderError

logger = logging.getLogger("gateway.providers")

DEFAULT_COOLDOWN_SECONDS = 3600


def _cooldown() -> int:
    return max(1, int(getattr(settings, "PROVIDER_ALERT_COOLDOWN_SECONDS", DEFAULT_COOLDOWN_SECONDS)))


def provider_auth_failed(model: ModelInfo, error: ProviderError) -> bool:
    """Alert super admins that `model`'s provider refused our credentials; False when this model was
    already alerted within the cool-down (by any process)."""
    if not cache.add(f"provider-alert:auth:{model.provider}:{model.model_name}", 1, _cooldown()):
        return False
    logger.error("provider %s refused the platform's credentials for model %s (%s): %s; its breaker is open and "
                 "calls fall back to other candidates", model.provider, model.model_name, error.code, error.detail)
    args = (model.provider, model.model_name, error.code, error.detail)
    threading.Thread(target=_enqueue, args=args, daemon=True, name=f"provider-alert-{model.model_name}").start()
    return True


def _enqueue(provider: str, model_name: str, code: str, detail: str) -> None:
    # A thread, so the event loop never waits on the broker (or, eager, on the database and SMTP).
    from llm.tasks import provider_alert_notify

    try:
        provider_alert_notify.delay(provider, model_name, code, detail)
    except Exception:  # a broker outage: the log line above is the alert of record
        logger.exception("could not send the provider alert for %s %s", provider, model_name)
    finally:
        connections.close_all()  # this thread's own connections (eager mode ran the task here)


def superadmins_notify(*, provider: str, model_name: str, code: str, detail: str) -> int:
    """Email every active super admin who has an address; the number of recipients."""
    from tenants.models import User

    recipients = sorted(set(User.objects.filter(is_superuser=True, is_active=True).exclude(email="")
                            .values_list("email", flat=True)))
    if not recipients:
        logger.warning("no active super admin has an email address: the provider alert for %s %s is in the log only",
                       provider, model_name)
        return 0
    subject = f"[LLM Gateway] {provider} refused the platform's credentials for {model_name}"
    body = (
        f"The {provider} provider answered {code} for model {model_name}: it refused the key the gateway sends.\n\n"
        f"What it said (credentials removed): {detail or '(nothing)'}\n\n"
        "The gateway opened this model's circuit breaker and routes calls to the other allowed models; tenants "
        "whose only candidate it was get a 502 'provider_auth' error. Check the provider's key (environment or "
        "the active ProviderCredential in Django Admin), its account and its access to this model.\n\n"
        f"You will not be alerted again for this model within {_cooldown()} seconds."
    )
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)
    return len(recipients)
