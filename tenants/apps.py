from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # No model signals keep the identity cache right: every write goes through tenants.services,
        # which drops the cached identities on commit (see the end of tenants/services.py).
        from catalog.changes import catalog_recorder_add
        from tenants import audit

        # The catalog may not import the audit log; it reports its changes to these (catalog/changes.py).
        catalog_recorder_add(audit.catalog_change_audit)
        catalog_recorder_add(audit.plan_change_identities_drop)
        audit.login_events_connect()
