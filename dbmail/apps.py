from django.apps import AppConfig


class DbmailConfig(AppConfig):
    name = "dbmail"
    verbose_name = "Outbound mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from dbmail.track import anymail as anymail_events

        anymail_events.connect()  # a no-op without django-anymail
