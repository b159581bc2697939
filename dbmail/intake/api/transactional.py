"""POST /api/v1/send/: one transactional email, made at most once per Idempotency-Key.

The key is claimed by inserting an ApiSend row under the unique (user, key)
constraint, in the same transaction that makes the emails. A second request
with the key, at the same moment on another host, waits in the database for
the first transaction and then finds its row: it never makes a second email,
and answers with the first one's. A key used again with a different payload
is the caller's mistake, refused (422) rather than answered with an email
the caller did not ask for.

Each address (the To, then each Cc) gets its own outbox email, as everywhere
in dbmail: the envelope names one recipient, the headers show To and Cc as
written. With Cc or attachments the bytes are built once, when queued, and
stored whole (as the comm panel's test mail is).
"""

import hashlib
import json
import mimetypes
from email.utils import formataddr

from django.conf import settings
from django.db import IntegrityError, transaction

from dbmail import audit, states
from dbmail.content.addresses import mailbox_key
from dbmail.exceptions import IdempotencyKeyReused
from dbmail.intake import outbox
from dbmail.models import ApiSend

KeyReused = IdempotencyKeyReused  # raised here under this name; the class is in dbmail.exceptions


def files_of(uploads):
    """[(filename, bytes, content type)] of the uploaded files, each read once."""
    files = []
    for upload in uploads:
        upload.seek(0)
        content_type = getattr(upload, "content_type", "") or mimetypes.guess_type(upload.name)[0]
        files.append((upload.name[:255], upload.read(), content_type or "application/octet-stream"))
    return files


def digest(data, files):
    """The payload's fingerprint, as understood (so JSON and a multipart form of one email agree)."""
    account = data.get("from")
    canonical = {
        "to": list(data["to"]),
        "cc": [list(c) for c in data.get("cc", [])],
        "subject": data["subject"],
        "text": data.get("text", ""),
        "html": data.get("html", ""),
        "from": account.pk if account else None,
        "reply_to": data.get("reply_to", ""),
        "headers": data.get("headers", {}),
        "files": [(name, content_type, hashlib.sha256(content).hexdigest()) for name, content, content_type in files],
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def send_once(user, key, data, files):
    """(ApiSend, made now?) for this payload; KeyReused when `key` was used for another one."""
    fingerprint = digest(data, files)
    with transaction.atomic():
        try:
            with transaction.atomic():
                send = ApiSend.objects.create(user=user, key=key, payload_sha256=fingerprint)
        except IntegrityError:
            if key is None:
                raise
            # The first request with this key has committed (the insert waited for it): answer with its emails.
            send = ApiSend.objects.get(user=user, key=key)
            if send.payload_sha256 != fingerprint:
                raise KeyReused(
                    f"Idempotency-Key already used for send #{send.pk} with another payload.", send
                ) from None
            return send, False
        emails = make_emails(user, data, files)
        send.emails.add(*emails)
        copies = f" and {len(emails) - 1} cc" if len(emails) > 1 else ""
        audit.record(user, "send email (API)", emails[0], detail=f"to {emails[0].to_address}{copies}, key {key or '-'}")
    return send, True


def make_emails(user, data, files):
    """One queued email per address, each sent once the transaction commits (the ad-hoc path)."""
    from dbmail.send.message import to_email_message

    account = data.get("from")
    from_email = account.address if account else settings.DEFAULT_FROM_EMAIL
    to = data["to"]
    cc = data.get("cc", [])
    everyone, seen = [], set()
    for name, address in [to, *cc]:
        if mailbox_key(address) not in seen:  # one email per mailbox, however often and however it is written
            seen.add(mailbox_key(address))
            everyone.append((name, address))
    emails = []
    for name, address in everyone:
        email = outbox.enqueue(
            formataddr((name, address)) if name else address,
            data["subject"],
            data.get("text", ""),
            data.get("html", ""),
            from_email=from_email,
            reply_to=data.get("reply_to", ""),
            headers=data.get("headers") or {},
            user=user,
        )
        if email.status == states.ENQUEUE.target and (cc or files):
            message = to_email_message(email, attachments=files, sign=False)  # signed when sent, as every email
            if cc:
                message.extra_headers["To"] = formataddr(to) if to[0] else to[1]
                message.cc = [formataddr(c) if c[0] else c[1] for c in cc]
            email.raw_message = message.message().as_bytes()
            email.save(update_fields=["raw_message"])
        emails.append(email)
    # After the commit: a send that fails then is logged, never raised (the emails stand, cron retries).
    outbox.send_after_commit(emails, robust=True)
    return emails
