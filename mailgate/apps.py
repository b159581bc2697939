from django.apps import AppConfig


class MailgateConfig(AppConfig):
    name = "mailgate"
    verbose_name = "Inbound mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.core import checks

        from mailgate import conf

        checks.register(conf.check_settings, "mailgate")
        # Registers the built-in list resolvers, which the models check names against.
        from mailgate.gate import routing  # noqa: F401
