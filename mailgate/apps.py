from django.apps import AppConfig
from django.db.models.signals import post_delete


class MailgateConfig(AppConfig):
    name = "mailgate"
    verbose_name = "Inbound mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # However an account is deleted (API, admin, code), the login its mirror holds leaves with it.
        post_delete.connect(_retire_sender, sender=self.get_model("MailAccount"), dispatch_uid="mailgate-retire-sender")


def _retire_sender(sender, instance, **kwargs):
    from mailgate.mailboxes import outgoing

    outgoing.retire_sender(instance)
