"""Inbound mail: the lists mail is routed through, every message that arrived, and the bounces found."""

import re

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


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
            from . import routing

            if self.resolver not in routing.registered_resolvers():
                known = ", ".join(sorted(routing.registered_resolvers())) or "none"
                raise ValidationError({"resolver": f"No resolver named {self.resolver!r}; known: {known}."})
        bad = [a for a in self.address_list() if "@" not in a]
        if bad:
            raise ValidationError({"addresses": f"Not addresses: {', '.join(bad)}"})

    def address_list(self):
        return [line.strip() for line in self.addresses.splitlines() if line.strip()]

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


class SenderNotice(models.Model):
    """When an address last got a notice from the gate, so notices are rate limited on any number of hosts."""

    address = models.CharField(max_length=254, unique=True)
    last_sent_at = models.DateTimeField()
    sent_count = models.PositiveIntegerField(default=0)
    suppressed_count = models.PositiveIntegerField(default=0, help_text="Notices not sent because of the limit.")

    def __str__(self):
        return self.address
