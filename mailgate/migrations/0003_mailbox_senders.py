"""Mark each mailbox account's own sender account, and undo links to sender accounts it never owned.

Before, a mail account's sender account was found by address (update_or_create),
so an account with the address of an existing, staff-managed sender account
took it over (overwrote its server and login) and stayed linked to it. A
mirror is made right after its account; a sender account older than the
mail account linked to it was somebody else's: the link is dropped (the
settings it was given cannot be recovered here: check those accounts' SMTP
settings in the admin).
"""

from django.db import migrations


def forwards(apps, schema_editor):
    MailAccount = apps.get_model("mailgate", "MailAccount")
    SenderAccount = apps.get_model("dbmail", "SenderAccount")
    for account in MailAccount.objects.exclude(sender=None).select_related("sender"):
        if account.sender.created_at < account.created_at:
            MailAccount.objects.filter(pk=account.pk).update(sender=None)
        else:
            SenderAccount.objects.filter(pk=account.sender_id).update(mailbox=True)


class Migration(migrations.Migration):
    dependencies = [
        ("dbmail", "0008_identities"),
        ("mailgate", "0002_mailboxes"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
