from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class MailgateConfig(AppConfig):
    name = "mailgate"
    verbose_name = "Inbound mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.core import checks

        from dbmail.content import domains
        from mailgate import conf

        checks.register(conf.check_settings, "mailgate")  # `manage.py check` names a bad setting and why
        # Registers the built-in list resolvers, which the models check names against.
        from mailgate import health
        from mailgate.gate import routing  # noqa: F401

        health.register()  # dbmail_status checks the IMAP poller and the gate too (dbmail never imports mailgate)
        # A list forward's From is the list address: its domain is one the site sends from (DNS checks).
        domains.register(_list_domains)
        # However an account is deleted (API, admin, code), the login its mirror holds leaves with it.
        post_delete.connect(_retire_sender, sender=self.get_model("MailAccount"), dispatch_uid="mailgate-retire-sender")
        # A grant made or removed switches the mirrors it covers on or off at once, not at their next send.
        post_save.connect(_grant_changed, sender="dbmail.SendGrant", dispatch_uid="mailgate-grant-saved")
        post_delete.connect(_grant_changed, sender="dbmail.SendGrant", dispatch_uid="mailgate-grant-deleted")


def _list_domains():
    from mailgate import conf

    return conf.settings.MAILGATE_LIST_DOMAINS


def _retire_sender(sender, instance, **kwargs):
    from mailgate.mailboxes import outgoing

    outgoing.retire_sender(instance)


def _grant_changed(sender, instance, **kwargs):
    from mailgate.mailboxes import outgoing

    outgoing.sync_covered_by(instance.address)
