from django.apps import AppConfig


class DbmailConfig(AppConfig):
    name = "dbmail"
    verbose_name = "Outbound mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.core import checks

        from dbmail import conf
        from dbmail.track import anymail as anymail_events

        checks.register(conf.check_settings, "dbmail")  # `manage.py check` names a bad setting and why

        anymail_events.connect()  # a no-op without django-anymail
