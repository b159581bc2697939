"""Storing one message read from a mailbox folder: raw bytes first, then its parts.

The bytes go into the gate's InboundMessage (like piped mail), parsing is
mailgate.gate.parsing's, and the HTML body, attachments and inline parts go to
Django's storage. A message that cannot be parsed keeps status "raw".

Exactly once: the row is unique on (folder, UIDVALIDITY, UID) and the
folder's high-water UID moves in the same transaction, so a poller killed at
any point either stored a message (and never fetches it again) or did not
(and fetches it next time). After a UIDVALIDITY change the server numbers
everything anew; a message whose bytes were already stored from this folder
under the old UIDVALIDITY is re-pointed at its new UID rather than stored
twice.
"""

import hashlib
import logging
import traceback
from datetime import UTC
from email.utils import getaddresses, parsedate_to_datetime

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.text import get_valid_filename

from mailgate.conf import settings as conf
from mailgate.gate import parsing
from mailgate.gate import receive as gate
from mailgate.models import InboundMessage, MailFolder, Message, MessagePart

log = logging.getLogger(__name__)


def store_incoming(folder, uidvalidity, uid, raw, size=None):
    """Store the message at (uidvalidity, uid) of `folder`; returns (message, created). Commits before returning.

    `size` is the message's full size when `raw` is only its header (over MAILGATE_MAX_BYTES).
    """
    raw = bytes(raw)
    digest = hashlib.sha256(raw).hexdigest()
    with transaction.atomic():
        existing = Message.objects.filter(folder=folder, uidvalidity=uidvalidity, uid=uid).first()
        if existing:
            return existing, False
        earlier = (
            Message.objects.select_for_update()
            .filter(folder=folder, sha256=digest)
            .exclude(uidvalidity=uidvalidity)
            .first()
        )
        if earlier:  # the same bytes under an old UIDVALIDITY: the server renumbered, the mail is not new
            earlier.uidvalidity, earlier.uid, earlier.deleted_on_server = uidvalidity, uid, False
            earlier.save(update_fields=["uidvalidity", "uid", "deleted_on_server", "updated_at"])
            _advance(folder, uid)
            return earlier, False
        if size is not None and size > len(raw):
            message = _store_header(folder, uidvalidity, uid, raw, digest, size)
        else:
            message = _store(folder, uidvalidity, uid, raw, digest)
        _advance(folder, uid)
    return message, True


def _advance(folder, uid):
    MailFolder.objects.filter(pk=folder.pk).update(last_uid=Greatest("last_uid", uid))


def _envelope(parsed, account):
    """(recipient, sender) as the delivering MTA recorded them, else the account's own address."""
    recipient = account.address
    sender = ""
    if parsed.ok:
        delivered = parsing.parseaddr_lower(parsed.first("delivered-to") or parsed.first("x-original-to"))
        recipient = delivered if "@" in delivered else recipient
        sender = parsing.parseaddr_lower(parsed.first("return-path"))
    return recipient[:254], sender[:254]


def _store(folder, uidvalidity, uid, raw, digest):
    account = folder.account
    parsed = parsing.parse(raw)
    recipient, sender = _envelope(parsed, account)
    inbound = InboundMessage.objects.create(
        envelope_sender=sender, envelope_recipient=recipient, raw=raw, size=min(len(raw), 2**31 - 1)
    )
    message = Message.objects.create(
        direction=Message.Direction.INCOMING,
        status=Message.Status.RAW,
        account=account,
        folder=folder,
        inbound=inbound,
        uidvalidity=uidvalidity,
        uid=uid,
        sha256=digest,
    )
    error = parsed.error if not parsed.ok else ""
    if parsed.ok:
        try:
            with transaction.atomic():
                _fill(message, parsed)
        except Exception:  # a part the email package cannot decode: keep the bytes, say why
            log.exception("mailgate: message %s from %s is kept raw", message.pk, folder)
            error = "parts cannot be extracted:\n" + traceback.format_exc()[-3000:]
            message.refresh_from_db()
    if error:
        message.status, message.last_error = Message.Status.RAW, parsing.clean_text(error)[:5000]
        message.save(update_fields=["status", "last_error", "updated_at"])
    if folder.route_to_lists:
        gate.reprocess(inbound)  # never raises; its savepoint leaves this transaction usable
    else:
        inbound.status = InboundMessage.Status.RAW if error else InboundMessage.Status.RECEIVED
        inbound.message_id, inbound.from_header, inbound.subject = (
            message.message_id,
            message.from_header,
            message.subject,
        )
        inbound.note = f"read from IMAP folder {folder}" + (f"; cannot be parsed: {error}" if error else "")
        inbound.note = parsing.clean_text(inbound.note)[:5000]
        inbound.save(update_fields=["status", "message_id", "from_header", "subject", "note"])
    return message


def _store_header(folder, uidvalidity, uid, header, digest, size):
    """An oversized message: its header is kept (as the gate keeps one), the message itself stays on the server."""
    parsed = parsing.parse(header)
    recipient, sender = _envelope(parsed, folder.account)
    error = f"over the limit of {conf.MAILGATE_MAX_BYTES} bytes ({size}); only the header is kept here"
    inbound = InboundMessage.objects.create(
        envelope_sender=sender,
        envelope_recipient=recipient,
        raw=header,
        size=min(size, 2**31 - 1),
        status=InboundMessage.Status.TOO_BIG,
        message_id=parsed.message_id,
        from_header=parsed.from_header,
        subject=parsed.subject,
        note=f"read from IMAP folder {folder}; {error}",
    )
    return Message.objects.create(
        direction=Message.Direction.INCOMING,
        status=Message.Status.RAW,
        account=folder.account,
        folder=folder,
        inbound=inbound,
        uidvalidity=uidvalidity,
        uid=uid,
        sha256=digest,
        truncated=True,
        message_id=parsed.message_id,
        subject=parsing.clean_text(parsed.subject),
        from_header=parsing.clean_text(parsed.from_header),
        date=_date(parsed) if parsed.ok else None,
        headers=parsed.headers,
        last_error=error + "; it is not deleted on the server",
    )


def _addresses(parsed, name):
    try:
        pairs = getaddresses(parsed.header(name))
    except Exception:  # malformed address list: nothing usable
        return []
    return [parsing.clean_text(address) for _, address in pairs if "@" in address]


def _date(parsed):
    try:
        value = parsedate_to_datetime(parsed.first("date"))
    except (TypeError, ValueError, IndexError):
        return None
    if value is not None and timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value


def _fill(message, parsed):
    message.message_id = parsed.message_id
    message.subject = parsing.clean_text(parsed.subject)
    message.from_header = parsing.clean_text(parsed.from_header)
    message.to, message.cc = _addresses(parsed, "to"), _addresses(parsed, "cc")
    message.date = _date(parsed)
    message.headers = {name: [parsing.clean_text(v) for v in values] for name, values in parsed.headers.items()}
    email = parsed.email_message()
    if email is None:  # past the parsing limits: the header is read, the body stays in the raw bytes
        message.last_error = f"{parsed.incomplete}; text and attachments are not extracted (the raw bytes are kept)"
        message.status = Message.Status.RECEIVED
        message.save()
        return
    text_part = email.get_body(preferencelist=("plain",))
    html_part = email.get_body(preferencelist=("html",))
    message.text = parsing.clean_text(_content(text_part)) if text_part is not None else ""
    html = _content(html_part) if html_part is not None else ""
    if html:
        message.html.save("body.html", ContentFile(html.encode("utf-8")), save=False)
    message.status = Message.Status.RECEIVED
    message.save()
    counters = {MessagePart.Kind.ATTACHMENT: 0, MessagePart.Kind.INLINE: 0}
    for part in _leaf_parts(email, skip=(text_part, html_part)):
        content_id = (part.get("Content-ID") or "").strip().strip("<>")
        kind = MessagePart.Kind.ATTACHMENT
        if content_id and (f"cid:{content_id}" in html or part.get_content_disposition() == "inline"):
            kind = MessagePart.Kind.INLINE
        _save_part(message, part, kind, counters[kind], content_id)
        counters[kind] += 1


def _content(part):
    """A text part as a string with plain newlines (the wire's CRLF is no part of the text)."""
    try:
        text = part.get_content()
    except (LookupError, UnicodeError):  # unknown or lying charset: decode leniently
        text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def _leaf_parts(part, skip):
    """The parts that are files: leaves other than the bodies, and attached messages as a whole."""
    if part.get_content_type() == "message/rfc822" and part is not skip[0]:
        yield part
    elif part.is_multipart():
        for child in part.iter_parts():
            yield from _leaf_parts(child, skip)
    elif not any(part is body for body in skip if body is not None):
        yield part


def _save_part(message, part, kind, position, content_id):
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        data = inner[0].as_bytes() if isinstance(inner, list) and inner else b""
    else:
        data = part.get_payload(decode=True) or b""
    filename = parsing.clean_text(part.get_filename() or "")
    return store_part(message, kind, position, filename, part.get_content_type(), data, content_id)


def store_part(message, kind, position, filename, content_type, data, content_id=""):
    """One attachment or inline part: its bytes in Django's storage, its description in a row."""
    row = MessagePart(
        message=message,
        kind=kind,
        position=position,
        filename=filename[:255],
        content_type=(content_type or "application/octet-stream")[:255],
        content_id=parsing.clean_text(content_id)[:998],
        size=len(data),
    )
    stored_name = get_valid_filename(filename or "part")[:100] or "part"
    row.file.save(stored_name, ContentFile(data), save=False)
    row.save()
    return row
