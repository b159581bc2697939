"""Inbound mail: the lists mail is routed through, every message that arrived, the bounces and complaints found."""

import re
import secrets

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from mailgate import resolvers
from mailgate.conf import settings as conf


class EmailList(models.Model):
    """One address pattern and what mail to it does (seed 001's EmailList)."""

    class Policy(models.TextChoices):
        ANYONE = "anyone", "Anyone may post"
        MEMBERS = "members", "Members only"
        STAFF = "staff", "Staff only"
        MODERATED = "moderated", "Moderated (held for approval)"

    name = models.CharField(max_length=100, help_text="Shown in List-Id and in the rewritten From.")
    seq = models.PositiveIntegerField(default=100, help_text="Lists are tried in this order; the first match wins.")
    regex = models.CharField(
        max_length=500,
        help_text="Python regular expression that must match the whole local part (case-insensitive), "
        "e.g. physics or (?P<code>\\w+)-students. Groups are passed to the resolver.",
    )
    match_full_address = models.BooleanField(
        default=False, help_text="Match the regex against the whole address (local@domain) instead."
    )
    active = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    users = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="email_lists")
    groups = models.ManyToManyField(Group, blank=True, related_name="email_lists")
    addresses = models.TextField(blank=True, help_text="Fixed addresses, one per line (a plain redirect).")
    resolver = models.CharField(
        max_length=100, blank=True, help_text="A resolver registered in code; it receives the regex groups."
    )
    archive_address = models.EmailField(blank=True, help_text="Gets a copy of everything forwarded.")
    subject_prefix = models.CharField(max_length=100, blank=True, help_text='e.g. "[Physics]"')
    posting_policy = models.CharField(max_length=16, choices=Policy.choices, default=Policy.MEMBERS)
    rewrite_from = models.BooleanField(
        default=True,
        help_text='DMARC-safe: From becomes "Ann Smith via <list>" <list address>, the sender goes to Reply-To.',
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["seq", "id"]
        verbose_name = "email list"

    def __str__(self):
        return self.name

    def clean(self):
        try:
            re.compile(self.regex)
        except re.error as exc:
            raise ValidationError({"regex": f"Not a valid regular expression: {exc}"}) from None
        if self.resolver:
            if self.resolver not in resolvers.registered_resolvers():
                known = ", ".join(sorted(resolvers.registered_resolvers())) or "none"
                raise ValidationError({"resolver": f"No resolver named {self.resolver!r}; known: {known}."})
        bad = [a for a in self.address_list() if "@" not in a]
        if bad:
            raise ValidationError({"addresses": f"Not addresses: {', '.join(bad)}"})

    def address_list(self):
        return [line.strip() for line in self.addresses.splitlines() if line.strip()]

    def breadth_warnings(self):
        """Why this pattern may catch more than meant: shown in the admin on saving (saving is still allowed).

        Probed with random addresses: a local part nobody would choose, a
        domain that exists nowhere.
        """
        local, domain = f"q{secrets.token_hex(6)}", f"{secrets.token_hex(4)}.outside.invalid"
        if not self.match_full_address:
            if self.match(f"{local}@{domain}"):
                return [
                    f"The pattern {self.regex!r} matches every local part (e.g. {local}): this list catches all "
                    "mail to the list domains, and the lists after it are never reached. Set MAILGATE_LIST_DOMAINS "
                    "so that only those domains count as the site's own."
                ]
            return []
        _, at, domain_pattern = self.regex.rpartition("@")
        try:
            outside = bool(self.match(f"{local}@{domain}")) or (
                bool(at) and re.fullmatch(domain_pattern, domain, re.IGNORECASE) is not None
            )
        except re.error:  # the part after the @ is not a pattern on its own (e.g. inside a group)
            outside = False
        if outside:
            return [
                f"The pattern {self.regex!r} matches addresses in any domain (e.g. …@{domain}), not only the "
                "site's: write the domain literally (lists\\.example\\.org)."
            ]
        return []

    def match(self, address):
        """The re.Match of `address` (an envelope recipient) against this list, or None."""
        local = address.rpartition("@")[0] if "@" in address else address
        subject = address if self.match_full_address else local
        try:
            return re.fullmatch(self.regex, subject, re.IGNORECASE)
        except re.error:
            return None  # a broken pattern saved past validation matches nothing


class InboundMessage(models.Model):
    """One message handed to the gate, stored raw before anything else is done with it."""

    class Status(models.TextChoices):
        RAW = "raw", "raw (stored, not parsed)"
        RECEIVED = "received"
        FORWARDED = "forwarded"
        HELD = "held", "held for moderation"
        REJECTED = "rejected", "rejected by a moderator"
        REFUSED = "refused", "refused by the posting policy"
        LOOP = "loop", "stopped (loop or auto-reply)"
        NO_LIST = "no_list", "no such list"
        BOUNCE = "bounce"
        COMPLAINT = "complaint", "complaint report (ARF)"
        TOO_BIG = "too_big", "over the size limit"
        FAILED = "failed", "failed (kept; process again)"

    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    envelope_sender = models.CharField(max_length=254, blank=True, help_text="Empty for the null sender <>.")
    envelope_recipient = models.CharField(max_length=254)
    raw = models.BinaryField(help_text="The bytes exactly as received (headers only when over the size limit).")
    size = models.PositiveIntegerField(default=0, help_text="Bytes received.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RAW, db_index=True)
    message_id = models.CharField(max_length=998, blank=True)
    from_header = models.CharField(max_length=998, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    email_list = models.ForeignKey(EmailList, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    match_groups = models.JSONField(default=dict, blank=True)
    forwarded_count = models.PositiveIntegerField(default=0)
    note = models.TextField(blank=True, help_text="Why it has its status (parse error, policy, traceback).")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name = "inbound message"

    def __str__(self):
        return f"#{self.pk} {self.envelope_sender or '<>'} -> {self.envelope_recipient}: {self.subject[:60]}"


class GateHeartbeat(models.Model):
    """What the gate last answered the MTA on one host, so health sees a gate that keeps answering 75.

    A 75 caused by the database being down cannot be written here; dbmail_status
    then finds the database unreachable itself.
    """

    host = models.CharField(max_length=255, unique=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_accepted_at = models.DateTimeField(null=True, blank=True, help_text="Last answer other than 75.")
    last_tempfail_at = models.DateTimeField(null=True, blank=True)
    last_tempfail = models.TextField(blank=True, help_text="Why the gate last answered 75.")
    tempfails_in_a_row = models.PositiveIntegerField(default=0)
    tempfails_total = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name = "gate heartbeat"

    def __str__(self):
        return self.host


class HeldMessage(InboundMessage):
    """The moderation queue: inbound messages waiting for approval (a proxy for its own admin page)."""

    class Meta:
        proxy = True
        verbose_name = "held message"
        verbose_name_plural = "moderation queue"


class Bounce(models.Model):
    """One failed recipient found in a bounce, matched to the outbound email or not."""

    class Type(models.TextChoices):
        HARD = "hard"
        SOFT = "soft"
        DELAYED = "delayed", "delayed (warning only)"
        UNKNOWN = "unknown", "unrecognised"

    inbound = models.ForeignKey(InboundMessage, on_delete=models.CASCADE, related_name="bounces")
    email = models.ForeignKey(
        "dbmail.TextOfEmail", null=True, blank=True, on_delete=models.SET_NULL, related_name="mailgate_bounces"
    )
    recipient = models.CharField(max_length=254, blank=True)
    bounce_type = models.CharField(max_length=16, choices=Type.choices)
    status_code = models.CharField(max_length=20, blank=True, help_text="RFC 3463 status, e.g. 5.1.1.")
    diagnostic = models.TextField(blank=True)
    applied = models.BooleanField(default=False, help_text="An event was handed on for the matched email.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.bounce_type} bounce for {self.recipient or '?'}"


class FeedbackReport(models.Model):
    """One complaint report (ARF, RFC 5965) a mailbox provider sent, matched to the outbound email or not.

    Never a bounce: nothing here counts as one. Which address it concerns is
    the matched email's own; the report's claims about recipients are not kept.
    """

    class Identified(models.TextChoices):
        TRACKING_HEADER = "tracking_header", "signed tracking header"
        VERP = "verp", "signed VERP address"
        MESSAGE_ID = "message_id", "our Message-ID"

    inbound = models.ForeignKey(InboundMessage, on_delete=models.CASCADE, related_name="feedback_reports")
    email = models.ForeignKey(
        "dbmail.TextOfEmail", null=True, blank=True, on_delete=models.SET_NULL, related_name="mailgate_feedback"
    )
    feedback_type = models.CharField(
        max_length=32, help_text="As the report says (abuse, fraud, not-spam, virus, other, auth-failure...)."
    )
    user_agent = models.CharField(max_length=200, blank=True, help_text="The report's User-Agent: who made it.")
    identified_by = models.CharField(max_length=16, choices=Identified.choices, blank=True)
    applied = models.BooleanField(default=False, help_text='A "complained" event was handed on for the email.')
    note = models.TextField(blank=True, help_text="Why it was not matched or not applied.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "complaint report"

    def __str__(self):
        return f"{self.feedback_type} report" + (f" about email #{self.email_id}" if self.email_id else " (unmatched)")


class SenderNotice(models.Model):
    """When an address last got a notice from the gate, so notices are rate limited on any number of hosts."""

    address = models.CharField(max_length=254, unique=True)
    last_sent_at = models.DateTimeField()
    sent_count = models.PositiveIntegerField(default=0)
    suppressed_count = models.PositiveIntegerField(default=0, help_text="Notices not sent because of the limit.")

    def __str__(self):
        return self.address


# --- Mailboxes (issue 6, seed 002): IMAP/SMTP accounts, their folders, and the messages exchanged ---

DEFAULT_AFTER_READ_TIMEOUT = 30  # seconds between polls of a folder when no options say otherwise


class MailServerProfile(models.Model):
    """How to reach a mail provider: its IMAP and SMTP servers, and default options for its accounts."""

    name = models.CharField(max_length=100, unique=True)
    imap_host = models.CharField(max_length=255)
    imap_port = models.PositiveIntegerField(default=993)
    imap_ssl = models.BooleanField(default=True, help_text="TLS from the first byte (port 993).")
    imap_starttls = models.BooleanField(default=False, help_text="Upgrade a plain connection with STARTTLS.")
    smtp_host = models.CharField(max_length=255, blank=True, help_text="Blank: the site's EMAIL_* server.")
    smtp_port = models.PositiveIntegerField(default=587)
    smtp_starttls = models.BooleanField(default=True)
    smtp_ssl = models.BooleanField(default=False)
    smtp_auth = models.BooleanField(default=True, help_text="Log in to the SMTP server as the account.")
    options = models.JSONField(default=dict, blank=True, help_text='e.g. {"after_read_timeout": 60}')

    class Meta:
        ordering = ["name"]
        verbose_name = "mail server profile"

    def __str__(self):
        return self.name

    def clean(self):
        if self.imap_ssl and self.imap_starttls:
            raise ValidationError("IMAP: choose SSL or STARTTLS, not both.")
        if self.smtp_ssl and self.smtp_starttls:
            raise ValidationError("SMTP: choose SSL or STARTTLS, not both.")
        validate_options(self.options)


class MailAccount(models.Model):
    """One mailbox on a profile's servers; its secret is write-only everywhere."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="mail_accounts"
    )
    profile = models.ForeignKey(MailServerProfile, on_delete=models.PROTECT, related_name="accounts")
    address = models.EmailField(unique=True)
    display_name = models.CharField(max_length=200, blank=True)
    login = models.CharField(max_length=255)
    secret = models.CharField(max_length=500, help_text="The password; never shown again once saved.")
    options = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    # Outgoing mail goes through dbmail's outbox as this sender account (its own SMTP server).
    sender = models.OneToOneField(
        "dbmail.SenderAccount", null=True, blank=True, on_delete=models.SET_NULL, related_name="mail_account"
    )
    discovered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["address"]
        verbose_name = "mail account"

    def __str__(self):
        return self.address

    def clean(self):
        self.address = (self.address or "").strip().lower()
        validate_options(self.options)


class MailFolder(models.Model):
    """One IMAP folder of an account; polled only when enabled."""

    account = models.ForeignKey(MailAccount, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=500, help_text="The folder's IMAP name, as the server lists it.")
    enabled = models.BooleanField(default=False)
    delete_on_server = models.BooleanField(
        default=False, help_text="Delete each message on the server once it is stored here."
    )
    route_to_lists = models.BooleanField(
        default=False, help_text="Hand each message to the gate's email list routing, as if piped by an MTA."
    )
    options = models.JSONField(default=dict, blank=True)
    uidvalidity = models.BigIntegerField(null=True, blank=True, editable=False)
    last_uid = models.BigIntegerField(default=0, editable=False, help_text="Highest UID stored.")
    last_polled_at = models.DateTimeField(null=True, blank=True, editable=False)
    lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    exists_on_server = models.BooleanField(default=True, editable=False)

    class Meta:
        ordering = ["account", "name"]
        constraints = [models.UniqueConstraint(fields=["account", "name"], name="mailgate_folder_unique_name")]
        verbose_name = "mail folder"

    def __str__(self):
        return f"{self.account.address}: {self.name}"

    def clean(self):
        validate_options(self.options)

    def option(self, name, default=None):
        """An option from this folder, else its account, else its profile, else `default`."""
        for options in (self.options, self.account.options, self.account.profile.options):
            if isinstance(options, dict) and name in options:
                return options[name]
        return default

    def after_read_timeout(self):
        return float(self.option("after_read_timeout", conf.MAILGATE_IMAP_AFTER_READ_TIMEOUT))


def validate_options(options):
    if not isinstance(options, dict):
        raise ValidationError({"options": "Options must be a JSON object."})
    timeout = options.get("after_read_timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValidationError({"options": "after_read_timeout must be a number of seconds (0 or more)."})


def _message_file_path(instance, filename):
    return f"mailgate/messages/{instance.pk or 'new'}/{filename}"


def _attachment_file_path(instance, filename):
    return f"mailgate/messages/{instance.message_id}/{instance.kind}s/{instance.position}-{filename}"


class Message(models.Model):
    """One message read from a folder or written for an account to send (seed 002's email/Messages)."""

    class Direction(models.TextChoices):
        INCOMING = "in", "incoming"
        OUTGOING = "out", "outgoing"

    class Status(models.TextChoices):
        SENDING = "sending"
        SENT = "sent"
        ERROR = "error"
        RECEIVED = "received"
        RAW = "raw", "raw (kept, cannot be parsed)"

    direction = models.CharField(max_length=3, choices=Direction.choices)
    status = models.CharField(max_length=10, choices=Status.choices, db_index=True)
    account = models.ForeignKey(MailAccount, on_delete=models.CASCADE, related_name="messages")
    folder = models.ForeignKey(MailFolder, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    # Incoming: the stored bytes are the gate's InboundMessage (raw first, parsed by mailgate.gate.parsing).
    inbound = models.OneToOneField(
        InboundMessage, null=True, blank=True, on_delete=models.PROTECT, related_name="mailbox_message"
    )
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    uid = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, help_text="Of the raw bytes: finds copies after a re-sync.")
    deleted_on_server = models.BooleanField(default=False)
    truncated = models.BooleanField(
        default=False, help_text="Over MAILGATE_MAX_BYTES: only its header was fetched; it stays on the server."
    )
    message_id = models.CharField(max_length=998, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    from_header = models.CharField(max_length=998, blank=True)
    to = models.JSONField(default=list, blank=True, help_text="Addresses (outgoing: each one gets the message).")
    cc = models.JSONField(default=list, blank=True)
    bcc = models.JSONField(default=list, blank=True)
    date = models.DateTimeField(null=True, blank=True, db_index=True)
    headers = models.JSONField(default=dict, blank=True)
    text = models.TextField(blank=True)
    html = models.FileField(upload_to=_message_file_path, max_length=500, blank=True)
    # Outgoing: the outbox emails (one per recipient) whose statuses this message mirrors.
    outbox = models.ManyToManyField("dbmail.TextOfEmail", blank=True, related_name="mailbox_messages")
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["folder", "uidvalidity", "uid"], name="mailgate_message_unique_uid"),
        ]
        indexes = [models.Index(fields=["folder", "sha256"], name="mailgate_msg_folder_sha")]

    def __str__(self):
        return f"#{self.pk} {self.direction} {self.status}: {self.subject[:60]}"

    @property
    def raw(self):
        """The original RFC 822 bytes of an incoming message (None for outgoing ones)."""
        return bytes(self.inbound.raw) if self.inbound_id else None


class MessagePart(models.Model):
    """An attachment, or an inline part the HTML refers to by cid:, kept in Django's storage."""

    class Kind(models.TextChoices):
        ATTACHMENT = "attachment"
        INLINE = "inline"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="parts")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    position = models.PositiveIntegerField(help_text="Order among the message's parts of this kind, from 0.")
    filename = models.CharField(max_length=255, blank=True)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    content_id = models.CharField(max_length=998, blank=True)
    size = models.PositiveIntegerField(default=0)
    file = models.FileField(upload_to=_attachment_file_path, max_length=500)

    class Meta:
        ordering = ["message", "kind", "position"]
        constraints = [
            models.UniqueConstraint(fields=["message", "kind", "position"], name="mailgate_part_unique_position")
        ]

    def __str__(self):
        return self.filename or f"{self.kind} {self.position}"
