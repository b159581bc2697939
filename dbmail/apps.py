from django.apps import AppConfig


class DbmailConfig(AppConfig):
    name = "dbmail"
    verbose_name = "Outbound mail"
    default_auto_field = "django.db.models.BigAutoField"
