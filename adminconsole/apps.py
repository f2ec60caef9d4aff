from django.apps import AppConfig


class AdminconsoleConfig(AppConfig):
    name = "adminconsole"
    default_auto_field = "django.db.models.BigAutoField"
