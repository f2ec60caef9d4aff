"""django.contrib.admin with the gateway's admin site (adminconsole.sites: the staff sign-in rules) as
`admin.site`. INSTALLED_APPS names this config in place of "django.contrib.admin" (settings, staff
sign-in block). Its own module: a second AppConfig in adminconsole/apps.py would hide the app's own."""

from django.contrib.admin.apps import AdminConfig


class GatewayAdminConfig(AdminConfig):
    default_site = "adminconsole.sites.GatewayAdminSite"
