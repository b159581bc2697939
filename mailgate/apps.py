from django.apps import AppConfig


class MailgateConfig(AppConfig):
    name = "mailgate"
    verbose_name = "Inbound mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from mailgate import health

        health.register()  # dbmail_status checks the IMAP poller and the gate too (dbmail never imports mailgate)
