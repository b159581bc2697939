from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class DbmailConfig(AppConfig):
    name = "dbmail"
    verbose_name = "Outbound mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.core import checks

        from dbmail import conf
        from dbmail.content.addresses import mailbox_key
        from dbmail.intake import tablequeue
        from dbmail.track import anymail as anymail_events

        # The suppression list's one rule for a mailbox's key (the models import no logic of their own).
        self.get_model("Suppression").key = staticmethod(mailbox_key)

        checks.register(conf.check_settings, "dbmail")  # `manage.py check` names a bad setting and why
        checks.register(tablequeue.check_database, "dbmail")
        checks.register(tablequeue.check_table, checks.Tags.database)

        anymail_events.connect()  # a no-op without django-anymail

        # A key made, rotated or retired here signs (or stops) at once in this process; others reload on their own.
        from dbmail.send import dkim

        key = self.get_model("DkimKey")
        post_save.connect(dkim.forget_keys, sender=key, dispatch_uid="dbmail-dkim-saved")
        post_delete.connect(dkim.forget_keys, sender=key, dispatch_uid="dbmail-dkim-deleted")
