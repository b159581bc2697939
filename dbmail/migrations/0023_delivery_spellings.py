"""The emails of requests still to expand get their addresses in their delivery spelling.

Expansion now stores each address in its delivery spelling
(dbmail.content.addresses.delivery_spelling: one per mailbox key, the domain
in A-labels, no needless quotes), so the (request, lower(to_address))
constraint stops a second email to another spelling of a mailbox. Emails made
before keep the spelling they were written in (ann@bücher.example): a request
expanded halfway under the old code, then resumed (a crash, a retry after a
failure, a resumed pause), would meet ann@xn--bcher-kva.example in its rest and
send a second email. So the emails of every request that can still be expanded
(queued, expanding, failed, paused) are respelled here; those of finished and
cancelled requests are never added to again and stay as they are.

Only rows that are not a plain ASCII address with a lower-case domain are read
into Python (an index scan of each such request's emails, filtered in SQL):
non-ASCII and quoted addresses are few. A row whose spelling another email of
its request already has (a second email that was made before) stays as it is.
Going back changes nothing that matters: the old code reads either spelling.
"""

from django.db import IntegrityError, migrations, transaction

from dbmail.content.addresses import delivery_spelling

STILL_TO_EXPAND = ("queued", "expanding", "failed", "paused")
# A plain ASCII address whose domain is lower-case, no trailing dot: its own delivery spelling already.
PLAIN = r"^[-A-Za-z0-9!#$%&'*+/=?^_`{|}~.]+@[-a-z0-9]+([.][-a-z0-9]+)*$"


def respell(apps, schema_editor):
    MessageRequest = apps.get_model("dbmail", "MessageRequest")
    TextOfEmail = apps.get_model("dbmail", "TextOfEmail")
    open_requests = MessageRequest.objects.filter(status__in=STILL_TO_EXPAND).values_list("pk", flat=True)
    for request_id in open_requests.iterator():
        odd = TextOfEmail.objects.filter(request_id=request_id).exclude(to_address__regex=PLAIN)
        for pk, address in odd.values_list("pk", "to_address").iterator():
            spelling = delivery_spelling(address)[:254]
            if spelling == address:
                continue
            try:
                with transaction.atomic():  # a savepoint: a collision leaves this row alone
                    TextOfEmail.objects.filter(pk=pk).update(to_address=spelling)
            except IntegrityError:
                pass


class Migration(migrations.Migration):
    dependencies = [("dbmail", "0022_suppression_keys")]

    operations = [migrations.RunPython(respell, migrations.RunPython.noop, elidable=False)]
