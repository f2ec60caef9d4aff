from django.apps import AppConfig
from django.db.models.signals import post_migrate


class MeteringConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "metering"

    def ready(self) -> None:
        from metering.pg_functions import install_pg_functions
        from metering.policy_keys import api_key_limits_validate
        from tenants import services as tenant_services

        # An API key's own budget is validated by the policy registry, which tenants cannot import.
        tenant_services.api_key_limits_validator = api_key_limits_validate

        # After every migrate (and the test runner's schema setup): the hot-path SQL functions
        # are replaced with the version this code expects.
        post_migrate.connect(lambda sender, using="default", **kw: install_pg_functions(using=using),
                             sender=self, weak=False)
