"""A list message -> one outbox email per member, the original MIME body byte for byte.

Only the header section is rewritten; the body bytes are copied untouched, so
attachments, inline images and any charset arrive exactly as sent. Each copy
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
from mailgate.conf import settings as conf
from mailgate.gate import addresses

_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n|)")
_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
# Dropped from the original and, where they matter, written anew.
_DROP = {
    "bcc", "resent-bcc", "return-path", "delivered-to", "x-original-to", "envelope-to",
    "dkim-signature", "x-google-dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results",
    "message-id", "list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe",
    "list-unsubscribe-post", "list-archive", "list-owner", "precedence", "references", "x-loop",
}  # fmt: skip
_REWRITTEN_WITH_FROM = {"from", "sender"}


def split_raw(raw):
    """(header fields as raw bytes, line separator, body bytes).

    Lines end as the email parser ends them (CRLF, LF or a lone CR). The header
    section ends at the first empty line or at the first line that is neither a
    field nor a continuation; what follows is the body, copied untouched.
    """
    fields, linesep, previous_ending, pos = [], None, b"", 0
    while pos < len(raw):
        line = _LINE.match(raw, pos)
        content, ending = line.group(1), line.group(2)
        linesep = linesep or (ending if ending in (b"\r\n", b"\n") else None)
        if not content:
            return fields, linesep or b"\n", raw[line.end() :]
        if content[:1] in (b" ", b"\t") and fields:
            fields[-1] += previous_ending + content
        elif _FIELD.match(content):
            fields.append(content)
        else:
            return fields, linesep or b"\n", raw[pos:]
        previous_ending, pos = ending, line.end()
    return fields, linesep or b"\n", b""


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


def list_id(route):
    local, _, domain = route.list_address.partition("@")
    label = re.sub(r"[^A-Za-z0-9-]+", "-", local).strip("-") or "list"
    return f"{route.email_list.name} <{label}.{domain}>"


def build_message(raw, parsed, route, message_id):
    """The bytes one member receives."""
    fields, linesep, body = split_raw(bytes(raw))
    email_list = route.email_list
    drop = set(_DROP)
    if email_list.rewrite_from:
        drop |= _REWRITTEN_WITH_FROM
    if email_list.subject_prefix:
        drop.add("subject")
    kept = [f for f in fields if field_name(f) not in drop]

    added = []
    if email_list.rewrite_from:
        added.append(b"From: " + formataddr((display_from(parsed, email_list), route.list_address), "utf-8").encode())
        has_reply_to = any(field_name(f) == "reply-to" for f in fields)
        original_from = next((f for f in fields if field_name(f) == "from"), None)
        if not has_reply_to and original_from is not None:
            # The sender's own From field, byte for byte, so its encoding survives.
            added.append(b"Reply-To:" + original_from.partition(b":")[2])
    if email_list.subject_prefix:
        subject = parsed.subject
        if email_list.subject_prefix.lower() not in subject.lower():
            subject = f"{email_list.subject_prefix} {subject}".strip()
        added.append(_fold("Subject", subject, linesep))
    added.append(_fold("Message-ID", message_id, linesep))
    references = " ".join(v for v in (parsed.first("references"), parsed.message_id) if v)
    if references:
        added.append(_fold("References", references, linesep))
    added.append(_fold("List-Id", list_id(route), linesep))
    added.append(_fold("List-Post", f"<mailto:{route.list_address}>", linesep))
    added.append(_fold("X-Loop", route.list_address, linesep))
    added.append(_fold("Precedence", "list", linesep))
    return linesep.join(kept + added) + linesep + linesep + body


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
    with transaction.atomic():
        for member in route.members:
            message_id = rendering.new_message_id()
            email = outbox.enqueue(
                formataddr((member.name, member.address)) if member.name else member.address,
                subject=parsed.subject,
                from_email=from_email,
                from_header=from_header if route.email_list.rewrite_from else parsed.from_header[:400],
                raw_message=build_message(inbound.raw, parsed, route, message_id),
                message_id=message_id,
            )
            emails.append(email)
        if send_at_once:
            outbox.send_after_commit(emails, robust=True)
    return len(emails)
