"""The peers' enqueue figures, timed in a child with bench/peer_settings.py (JSON on the last line).

    python bench/peer_child.py po-bulk N         post_office mail.send_many: N emails from one template
    python bench/peer_child.py po-each N         post_office mail.send, one email per call (text given)
    python bench/peer_child.py mailer-each N     django-mailer send_mail, one email per call

po-bulk renders the benchmark's newsletter (the same subject and text
template as dbmail's requests, post_office's own EmailTemplate) for the
first N active users, as post_office is used for a mailing: one send_many
call per 1,000 recipients. The per-call figures send the same password-reset
text as bench/enqueue_child.py, each call in autocommit, after a few calls
of warm-up.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peer_settings")

import django  # noqa: E402

django.setup()

from bench.texts import RESET_SUBJECT, RESET_TEXT, SENDER, SUBJECT, TEXT_BODY  # noqa: E402

FROM = f"The Office <{SENDER}>"


def po_bulk(count):
    from django.contrib.auth import get_user_model
    from post_office import mail
    from post_office.models import EmailTemplate

    template, _ = EmailTemplate.objects.get_or_create(
        name="bench-letter", defaults={"subject": SUBJECT, "content": TEXT_BODY, "html_content": ""}
    )
    users = list(
        get_user_model()
        .objects.filter(is_active=True)
        .order_by("pk")
        .values_list("email", "first_name", "last_name", "username")[:count]
    )
    started = time.perf_counter()
    for start in range(0, len(users), 1000):
        mail.send_many(
            [
                {
                    "recipients": [email],
                    "sender": FROM,
                    "template": template,
                    "context": {
                        "name": f"{first} {last}",
                        "first_name": first,
                        "username": username,
                        "email": email,
                        "site_name": "mailsite",
                        "unsubscribe_url": f"https://example.org/unsubscribe/{username}/",
                    },
                }
                for email, first, last, username in users[start : start + 1000]
            ]
        )
    return len(users), time.perf_counter() - started


def po_each(count):
    from post_office import mail
    from post_office.models import Email

    def one(i):
        mail.send(f"reader{i}@example.net", FROM, subject=RESET_SUBJECT, message=RESET_TEXT.format(n=i))

    return timed(one, count, Email)


def mailer_each(count):
    from mailer import send_mail
    from mailer.models import Message

    def one(i):
        send_mail(RESET_SUBJECT, RESET_TEXT.format(n=i), FROM, [f"reader{i}@example.net"])

    return timed(one, count, Message)


def timed(one, count, model):
    for i in range(20):
        one(10_000_000 + i)  # warm-up, as a web server's worker would be
    model.objects.all().delete()  # the queue was empty before: only the N timed emails stay for the send
    started = time.perf_counter()
    for i in range(count):
        one(i)
    return count, time.perf_counter() - started


MODES = {"po-bulk": po_bulk, "po-each": po_each, "mailer-each": mailer_each}

if __name__ == "__main__":
    made, seconds = MODES[sys.argv[1]](int(sys.argv[2]))
    print(json.dumps({"emails": made, "seconds": seconds}))
