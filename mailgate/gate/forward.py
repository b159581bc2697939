"""A list message -> one outbox email per member, the original MIME body byte for byte.

Only the header section is rewritten; the body bytes are copied untouched, so
attachments, inline images and any charset arrive exactly as sent. The one
exception is a line over 998 octets, which SMTP servers refuse: a part sent
as it is that has one is re-encoded base64, alone (mailgate.gate.long_lines). Each copy
gets its own Message-ID (the outbox row's, so bounces and tracking find it);
the original one is kept in References. Bcc, envelope and DKIM headers of the
original are dropped: Bcc must never travel, and a signature over a From we
replace would only fail.

Senders: forwards are sent by the site's DEFAULT_FROM_EMAIL account (or by a
staff-managed SenderAccount with the list's own address when one is
configured, to use its SMTP server; never by one mirroring a user's mailbox
account, whose server and login are the user's). The list address appears only in the rewritten From header of
the raw message, so no arbitrary address becomes a sender: the list address
is by construction one the site routes itself.
"""

import re
from email import policy as email_policy
from email.header import Header
from email.utils import formataddr

from django.conf import settings
from django.db import transaction

from dbmail.content import rendering
from dbmail.intake import outbox
from dbmail.models import TextOfEmail
from dbmail.track.header import TRACKING_HEADER
from mailgate.conf import settings as conf
from mailgate.gate import addresses, long_lines, parsing

# Dropped from the original and, where they matter, written anew. X-Loop stays: every list a message
# went through adds its own, so each one recognises the message when it comes back.
_DROP = {
    "bcc", "resent-bcc", "return-path", "delivered-to", "x-original-to", "envelope-to",
    "dkim-signature", "x-google-dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results",
    "message-id", "list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe",
    "list-unsubscribe-post", "list-archive", "list-owner", "precedence", "references",
    TRACKING_HEADER.lower(),  # the outbox writes each copy's own when it sends it
}  # fmt: skip
_REWRITTEN_WITH_FROM = {"from", "sender"}


def split_raw(raw):
    """(header fields as raw bytes, line separator, body bytes), in one pass over the bytes.

    Lines end as the email parser ends them (CRLF, LF or a lone CR). The header
    section ends at the first empty line or at the first line that is neither a
    field nor a continuation; what follows is the body, copied untouched.
    """
    start, end, body = parsing.header_section(raw)
    newline = re.search(rb"\r\n|\n", raw[: min(len(raw), 64 * 1024)])
    linesep = newline.group() if newline else b"\n"
    fields = [field for _, field in parsing.raw_fields(raw, start, end)]
    return fields, linesep, raw[body:]


def field_name(raw_field):
    name, colon, _ = raw_field.partition(b":")
    return name.strip().decode("ascii", "replace").lower() if colon else ""


def _fold(name, value, linesep):
    """One header field as ASCII bytes, non-ASCII text as RFC 2047 encoded words."""
    policy = email_policy.SMTP.clone(linesep=linesep.decode(), max_line_length=78)
    try:
        folded = policy.fold(*policy.header_store_parse(name, value))
    except Exception:  # a value the structured parser rejects still goes out, as encoded text
        folded = f"{name}: {Header(value, 'utf-8').encode(linesep=linesep.decode())}"
    return folded.rstrip("\r\n").encode("ascii", "replace")


def display_from(parsed, email_list):
    """The DMARC-safe From: "Ann Smith via Physics" <list address>."""
    who = parsed.from_name or parsed.from_address.partition("@")[0] or "Someone"
    return f"{who} via {email_list.name}"


REFERENCES_CHARS = 2000  # of References written: the thread's first ids and the last ones (RFC 5322 3.6.4)


def _references(parsed):
    """The original's References plus its Message-ID, trimmed from the middle to REFERENCES_CHARS."""
    ids = [v for v in parsed.first("references").split() if v] + ([parsed.message_id] if parsed.message_id else [])
    text = " ".join(ids)
    if len(text) <= REFERENCES_CHARS:
        return text
    head = ids[0][: REFERENCES_CHARS // 2]
    tail = []
    for value in reversed(ids[1:]):
        if len(head) + sum(len(t) + 1 for t in tail) + len(value) + 1 > REFERENCES_CHARS:
            break
        tail.insert(0, value)
    return " ".join([head, *tail])


def list_id_value(address):
    """The id of our List-Id for a list address: label.domain (RFC 2919), the label the local part made safe."""
    local, _, domain = address.partition("@")
    label = re.sub(r"[^A-Za-z0-9-]+", "-", local).strip("-") or "list"
    return f"{label}.{domain}"


def list_id(route):
    return f"{route.email_list.name} <{list_id_value(route.list_address)}>"


class Copy:
    """The bytes a member receives, prepared once per message: only the Message-ID differs between copies.

    The original header section is copied as it is, less the dropped fields,
    which one regular expression finds: the cost is one pass, however many
    fields the message has.
    """

    def __init__(self, raw, parsed, route):
        raw = bytes(raw)
        start, end, body = parsing.header_section(raw)
        newline = re.search(rb"\r\n|\n", raw[: min(len(raw), 64 * 1024)])
        self.linesep = linesep = newline.group() if newline else b"\n"
        self.body = raw[body:]
        email_list = route.email_list
        drop = set(_DROP)
        # A line over 998 octets is refused by SMTP servers: folded in the header, re-encoded in a body.
        reencode = long_lines.needs_base64(self.body, parsed)
        if reencode:
            drop |= {"content-transfer-encoding"}
            self.body = long_lines.whole_as_base64(self.body, parsed, linesep)
        elif parsed.ok and parsed.complete:
            self.body = long_lines.reencode_parts(self.body, parsed.message, linesep)
        if email_list.rewrite_from:
            drop |= _REWRITTEN_WITH_FROM
        if email_list.subject_prefix:
            drop.add("subject")
        found = list(parsing.find_fields(raw, drop | {"from", "reply-to"}, start, end))
        pieces, pos = [], start
        for name, field_start, _, following in found:
            if name in drop:
                pieces.append(raw[pos:field_start])
                pos = following
        pieces.append(raw[pos:end])
        kept = b"".join(pieces)
        if kept and not kept.endswith((b"\n", b"\r")):  # the last field ended the message
            kept += linesep
        kept = long_lines.refold(kept, linesep)

        added = []
        if email_list.rewrite_from:
            added.append(
                b"From: " + formataddr((display_from(parsed, email_list), route.list_address), "utf-8").encode()
            )
            has_reply_to = any(name == "reply-to" for name, *_ in found)
            original_from = next(((s, e) for name, s, e, _ in found if name == "from"), None)
            if not has_reply_to and original_from is not None:
                # The sender's own From field, byte for byte, so its encoding survives.
                added.append(b"Reply-To:" + raw[original_from[0] : original_from[1]].partition(b":")[2])
        if email_list.subject_prefix:
            subject = parsed.subject
            if email_list.subject_prefix.lower() not in subject.lower():
                subject = f"{email_list.subject_prefix} {subject}".strip()
            added.append(_fold("Subject", subject, linesep))
        if reencode:
            if parsed.first("mime-version") == "":
                added.append(b"MIME-Version: 1.0")
            added.append(b"Content-Transfer-Encoding: base64")
        self.head = kept + b"".join(field + linesep for field in added)
        after = []
        references = _references(parsed)
        if references:
            after.append(_fold("References", references, linesep))
        after.append(_fold("List-Id", list_id(route), linesep))
        after.append(_fold("List-Post", f"<mailto:{route.list_address}>", linesep))
        after.append(_fold("X-Loop", route.list_address, linesep))
        after.append(_fold("Precedence", "list", linesep))
        self.tail = linesep + linesep.join(after) + linesep + linesep

    def render(self, message_id):
        return b"".join((self.head, _fold("Message-ID", message_id, self.linesep), self.tail, self.body))


def build_message(raw, parsed, route, message_id):
    """The bytes one member receives."""
    return Copy(raw, parsed, route).render(message_id)


def _sending_account(route):
    if addresses.staff_senders().filter(address__iexact=route.list_address, active=True).exists():
        return route.list_address
    return settings.DEFAULT_FROM_EMAIL


def forward(inbound, parsed, route):
    """Queue one email per member; returns how many.

    Small lists are sent by this process once the transaction commits (one
    connection per email, fine for a few); bigger ones wait for dbmail_cron,
    which sends a batch over one connection, so the MTA is not kept waiting.
    A failure while sending after the commit is logged, never raised: the
    forwards are committed by then, and an error exit would make the MTA
    deliver the message again.
    """
    send_at_once = len(route.members) <= conf.MAILGATE_SEND_NOW_MAX
    from_email = _sending_account(route)
    from_header = formataddr((display_from(parsed, route.email_list), route.list_address))
    emails = []
    copy = Copy(inbound.raw, parsed, route)
    with transaction.atomic():
        for member in route.members:
            message_id = rendering.new_message_id(route.list_address)  # the domain of the From it gets
            email = outbox.enqueue(
                formataddr((member.name, member.address)) if member.name else member.address,
                subject=parsed.subject,
                from_email=from_email,
                from_header=from_header if route.email_list.rewrite_from else parsed.from_header[:400],
                raw_message=copy.render(message_id),
                message_id=message_id,
            )
            # Only the key and status are kept: a big message times the members held until the commit is a lot.
            emails.append(TextOfEmail(pk=email.pk, status=email.status))
        if send_at_once:
            outbox.send_after_commit(emails, robust=True)
    return len(emails)
