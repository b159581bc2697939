"""The outbox: requests, the emails they become, and what happened to each.

The statuses of a MessageRequest and of a TextOfEmail, the transitions between
them and the groups are defined in dbmail.states; every writer of either
status column (creation in intake, claims and outcomes in send, tracking, the
cancel and retry helpers below, the comm panel and the admin) moves rows only
along its transitions. See DESIGN.md for the state machine.
"""

import re
import uuid

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Count, Q
from django.db.models.functions import Coalesce, Lower, Now
from django.utils import timezone

from dbmail import states


class SenderAccount(models.Model):
    """A From address mail may be sent from (seed 003: only configured accounts send)."""

    address = models.EmailField(unique=True)
    display_name = models.CharField(max_length=200, blank=True)
    active = models.BooleanField(default=True)
    # Optional own SMTP server; blank host means the site's EMAIL_* settings.
    smtp_host = models.CharField(max_length=255, blank=True)
    smtp_port = models.PositiveIntegerField(null=True, blank=True)
    smtp_username = models.CharField(max_length=255, blank=True)
    smtp_password = models.CharField(max_length=255, blank=True)
    smtp_use_tls = models.BooleanField(default=False)
    smtp_use_ssl = models.BooleanField(default=False)
    # A user's mailbox account (mailgate) sends through a sender account of its own, made for it and written
    # only by it; every other sender account is staff's. Kept (switched off) once the mailbox account is gone.
    mailbox = models.BooleanField(
        default=False, editable=False, help_text="Mirrors a user's mailbox account; not offered in the comm panel."
    )
    # A cap per day (UTC), counted for all hosts together (dbmail.send.caps); a warm-up grows it day by day.
    daily_cap = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many emails a day (UTC day); empty: no cap."
    )
    warmup_start = models.DateField(
        null=True, blank=True, help_text="Warm-up: the first day (UTC) of the growing cap; empty: no warm-up."
    )
    warmup_initial = models.PositiveIntegerField(
        null=True, blank=True, help_text="Warm-up: the cap on its first day (and before it)."
    )
    warmup_factor = models.FloatField(
        default=1.5, help_text="Warm-up: each day's cap is the day before's times this, until it reaches the daily cap."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["address"]

    def __str__(self):
        return self.from_header

    def clean(self):
        self.address = self.address.strip().lower()
        if self.smtp_use_tls and self.smtp_use_ssl:
            raise ValidationError("Choose TLS or SSL, not both.")
        errors = {}
        if (self.warmup_start is None) != (self.warmup_initial is None):
            errors["warmup_initial"] = "A warm-up needs both its first day and its first day's cap."
        elif self.warmup_start is not None and self.daily_cap is None:
            errors["daily_cap"] = "A warm-up grows up to the daily cap: set one."
        if self.warmup_factor is not None and self.warmup_factor < 1:
            errors["warmup_factor"] = "The cap grows: the factor is 1 or more (1.5: half as much again each day)."
        if errors:
            raise ValidationError(errors)

    def cap_on(self, day):
        """How many emails this account may send on `day` (a UTC date); None when there is no cap."""
        if self.daily_cap is None:
            return None
        if self.warmup_start is None or not self.warmup_initial:
            return self.daily_cap
        grown, factor = float(self.warmup_initial), max(self.warmup_factor or 1.0, 1.0)
        for _ in range(min(max(0, (day - self.warmup_start).days), 1000)):
            if grown >= self.daily_cap:
                break
            grown *= factor
        return min(int(grown), self.daily_cap)

    @property
    def from_header(self):
        from email.utils import formataddr

        if not self.display_name:
            return self.address
        # formataddr quotes or encodes the name but refuses a non-ASCII address (an IDN domain, which
        # dbmail.content.addresses writes as A-labels when the mail goes out): it gets a stand-in.
        return formataddr((self.display_name, "a@a"))[: -len("<a@a>")] + f"<{self.address}>"

    def connection_overrides(self):
        """Keyword arguments for get_connection() when this account has its own server."""
        if not self.smtp_host:
            return {}
        return {
            "host": self.smtp_host,
            "port": self.smtp_port or 25,
            "username": self.smtp_username,
            "password": self.smtp_password,
            "use_tls": self.smtp_use_tls,
            "use_ssl": self.smtp_use_ssl,
        }


_GRANT_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")
_GRANT_LOCAL = re.compile(r"[^\s@<>()\[\],;:\"\\]+")


class SendGrant(models.Model):
    """Staff allow a user, or everyone in a group, to send as an address (or any address of a domain).

    Needed to send as an address through the site's own mail server, which
    trusts the site and checks no From (dbmail.intake.grants). Revoking is
    deleting; the admin's history keeps who granted and removed what.
    """

    address = models.CharField(
        max_length=254, help_text="An address (ann@example.org) or a whole domain (@example.org); stored lower-case."
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="send_grants"
    )
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="send_grants")
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    granted_at = models.DateTimeField(default=timezone.now, editable=False)
    note = models.CharField(max_length=500, blank=True, help_text="Why (shown to staff only).")

    class Meta:
        ordering = ["address", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, group__isnull=True) | Q(user__isnull=True, group__isnull=False),
                name="dbmail_grant_user_or_group",
            )
        ]
        indexes = [models.Index(fields=["address"], name="dbmail_grant_address")]

    def __str__(self):
        return f"{self.address} to {self.user or self.group}"

    def save(self, *args, **kwargs):
        self.address = self.address.strip().lower()
        super().save(*args, **kwargs)

    def clean(self):
        self.address = (self.address or "").strip().lower()
        errors = {}
        local, at, domain = self.address.rpartition("@")
        if not at or not _GRANT_DOMAIN.fullmatch(domain) or (local and not _GRANT_LOCAL.fullmatch(local)):
            errors["address"] = "Give an address (ann@example.org) or a whole domain (@example.org)."
        if bool(self.user_id) == bool(self.group_id):
            errors["user"] = "Grant to a user or to a group (one of the two)."
        if errors:
            raise ValidationError(errors)


class AddressToken(models.Model):
    """The short token that stands for an address in unsubscribe links and mailtos (dbmail.content.tokens).

    Written when mail carrying the token is made; never purged (people use
    year-old links). The token is a keyed hash of the address, so it is
    checked again against the address stored here.
    """

    token = models.CharField(max_length=32, primary_key=True)
    address = models.CharField(max_length=254)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "address token"

    def __str__(self):
        return self.address


class BodyFormat(models.TextChoices):
    """How the author wrote the HTML part (the comm panel's editors); the HTML body is what is sent either way.

    html: raw HTML, sent as written. rich: made in the WYSIWYG editor, cleaned
    on save. markdown: the text body is Markdown; the HTML body is made from it
    on save. Rich and Markdown bodies are fragments, sent in the house layout
    (dbmail.content.layout).
    """

    HTML = "html", "HTML"
    RICH = "rich", "Rich text"
    MARKDOWN = "markdown", "Markdown"


class MessageRequest(models.Model):
    """One "procedure" (seed 000): a composed mail and who should get it."""

    Status = states.RequestStatus

    sender = models.ForeignKey(SenderAccount, on_delete=models.PROTECT, related_name="requests")
    reply_to = models.EmailField(blank=True)
    subject = models.CharField(max_length=998, help_text="Django template; rendered on one line.")
    text_body = models.TextField(blank=True, help_text="Django template for the plain text part.")
    html_body = models.TextField(blank=True, help_text="Django template for the HTML part (optional).")
    body_format = models.CharField(max_length=16, choices=BodyFormat.choices, default=BodyFormat.HTML)
    recipient_set = models.CharField(max_length=100, help_text="A registered recipient set.")
    recipient_params = models.JSONField(default=dict, blank=True)
    context = models.JSONField(default=dict, blank=True, help_text="Extra template variables.")
    creator = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    send_at = models.DateTimeField(default=timezone.now, help_text="Not expanded or sent before this time.")
    status = models.CharField(
        max_length=16, choices=Status.choices, default=states.REQUEST_CREATE.target, db_index=True
    )

    # Expansion bookkeeping: who holds it, until when, and where it got to.
    expand_token = models.UUIDField(null=True, blank=True, editable=False)
    expand_lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    checkpoint = models.JSONField(null=True, blank=True, editable=False)
    recipient_count = models.PositiveIntegerField(default=0, editable=False)
    expanded_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Why expansion stopped (status "failed"), in words; cleared by a retry, kept in the request's history.
    failure = models.TextField(blank=True, editable=False)
    failed_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Per-status counts of emails removed by dbmail_purge, so totals survive a purge.
    purged_counts = models.JSONField(default=dict, blank=True, editable=False)
    # The reputation guard (dbmail.track.guard): why it paused the request, and what was counted when a
    # person last resumed it (the guard then judges only the mail sent since).
    paused_reason = models.TextField(blank=True, editable=False)
    paused_at = models.DateTimeField(null=True, blank=True, editable=False)
    paused_from = models.CharField(
        max_length=16, blank=True, editable=False, help_text="The status a resume returns to."
    )
    guard_baseline = models.JSONField(null=True, blank=True, editable=False)
    # Comm panel: a public web version (ESP's `public`) at an unguessable address, without per-recipient data.
    public = models.BooleanField(default=False, help_text="Show a web version to anyone with its link.")
    public_id = models.UUIDField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "send_at"], name="dbmail_req_due")]

    def __str__(self):
        return f"#{self.pk} {self.subject[:60]}"

    def save(self, *args, **kwargs):
        # A public request gets its unguessable web-version id however it was made (panel, admin, code).
        if self.public and self.public_id is None:
            self.public_id = uuid.uuid4()
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], "public_id"}
        super().save(*args, **kwargs)

    def clean(self):
        # What the request knows by itself. Its recipient set and templates need the content
        # modules, which models do not import: dbmail.content.validation checks those.
        errors = {}
        if not (self.text_body.strip() or self.html_body.strip()):
            errors["text_body"] = "Write a text or an HTML body."
        if self.sender_id and not self.sender.active:
            errors["sender"] = "This sender account is not active."
        if errors:
            raise ValidationError(errors)

    def possibly_delivered_count(self):
        """Emails with an attempt of unknown outcome (possibly delivered twice); purged ones are not counted."""
        return self.emails.filter(possibly_delivered__gt=0).count()

    def status_counts(self):
        """Emails per status, including those already purged; waiting mail of an inactive account counts as held."""
        counts = dict(self.purged_counts or {})
        for status, n in TextOfEmail.counts(self.emails.all()).items():
            counts[status] = counts.get(status, 0) + n
        return counts

    @property
    def held(self):
        """Due or being expanded while its sender account is inactive: nothing is made or sent until it is active."""
        return self.status in states.REQUEST_TO_EXPAND and not self.sender.active

    def shown_status(self):
        """The status as the panel and admin show it: "held" is derived, never stored."""
        return states.HELD if self.held else self.status

    def tracking_counts(self):
        """What the MTA reported back: delivered, bounced and complained emails (zeros included)."""
        counts = self.status_counts()
        return {status: counts.get(status, 0) for status in states.TRACKED}

    def delete(self, *args, **kwargs):
        # The emails' request_id has no database constraint (migration 0019_expand): lock the request
        # first, so a chunk being written commits before its emails are collected, and the next
        # chunk's checkpoint update finds the request gone and writes nothing.
        with transaction.atomic():
            MessageRequest.objects.select_for_update().filter(pk=self.pk).exists()
            return super().delete(*args, **kwargs)

    def cancel(self, actor=None, via="", by="shell"):
        """Stop the request: no further expansion, and unsent emails become cancelled (each with its event).

        Returns the rows changed (the request's own, then its emails'). The step goes into the
        request's history here, once, whoever asked (the panel, the admin, the API, a shell):
        an AuditEvent of kind "cancel" naming `actor`, or the program `by` when there is no user,
        and `via` ("admin", "API") in its action. A request that could not be cancelled (already
        cancelled, or sent) records nothing.
        """
        draft = self.status == states.RequestStatus.DRAFT
        updated = states.CANCEL_REQUEST.update(
            MessageRequest.objects.filter(pk=self.pk), expand_token=None, expand_lease_until=None
        )
        self.status = states.CANCEL_REQUEST.target
        stopped = TextOfEmail.cancel(self.emails.all(), actor=actor)
        if updated:
            action = ("discard draft" if draft else "cancel") + (f" ({via})" if via else "")
            detail = "" if draft else f"{stopped} email(s) stopped before sending"
            AuditEvent.objects.record(actor, action, self, detail=detail, kind=AuditEvent.Kind.CANCEL, by=by)
        return updated + stopped

    def retry(self, user=None):
        """A failed request goes back to queued and resumes from its checkpoint: what was done in words, or "".

        The words are the detail of the request's step, which whoever asked records through
        dbmail.audit.record (kind "retry").
        """
        updated = states.RETRY_REQUEST.update(
            MessageRequest.objects.filter(pk=self.pk),
            failure="",
            failed_at=None,
            expand_token=None,
            expand_lease_until=None,
        )
        if not updated:
            return ""
        after = (self.checkpoint or {}).get("after")
        self.refresh_from_db(fields=["status", "failure", "failed_at", "expand_token", "expand_lease_until"])
        return "retry: expansion resumes " + ("from the start" if after is None else f"after position {after}")


_ACTION_CHUNK = 5000  # emails a cancel or retry locks and logs per transaction


class TextOfEmail(models.Model):
    """One email to one address, rendered and ready to go (seed 001's TextOfEmail)."""

    Status = states.EmailStatus

    # No index of its own: the unique (request, lower(address)) index starts with it. No database
    # constraint either (checked row by row, it was a fifth of PostgreSQL's work per email expanded):
    # only expansion writes it, in a transaction that first updates the request, so the request is
    # there at the commit; and MessageRequest.delete() waits for a chunk being written.
    request = models.ForeignKey(
        MessageRequest,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="emails",
        db_index=False,
        db_constraint=False,
    )
    # Unindexed: accounts and users are deleted rarely (a user's deletion then scans the table once,
    # which dbmail_purge keeps bounded), while every index costs each of 10,000 inserts a second and
    # both status updates of every email sent.
    account = models.ForeignKey(SenderAccount, null=True, blank=True, on_delete=models.PROTECT, db_index=False)
    # No database constraint: PostgreSQL checks a foreign key row by row, and for the user (a different
    # row for every email, each locked in turn) that cost expansion as much as the COPY of the row itself
    # (docs/scaling.md#where-expansion-spends). Nothing reads the user back when sending; Django's
    # SET_NULL still clears it when a user is deleted through the ORM.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        db_index=False,
        db_constraint=False,
    )
    to_address = models.CharField(max_length=254)
    to_name = models.CharField(max_length=200, blank=True)
    # The recipient's destination group (dbmail.send.destinations), set when the email is made so that a
    # claim can pass over a group that must wait; empty on older rows, which are classified when claimed.
    dest_group = models.CharField(max_length=40, null=True, blank=True, editable=False)
    from_header = models.CharField(max_length=400, help_text="The From header, display name included.")
    envelope_sender = models.CharField(max_length=254, help_text="SMTP MAIL FROM; bounces go here.")
    reply_to = models.CharField(max_length=254, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    text = models.TextField(blank=True)
    html = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    # The complete message for forwards, which must keep their MIME structure byte for byte.
    raw_message = models.BinaryField(null=True, blank=True)
    message_id = models.CharField(max_length=255)  # unique: a constraint, which spares a LIKE index

    status = models.CharField(max_length=16, choices=Status.choices, default=states.ENQUEUE.target)
    status_changed_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # While status is "sending": the claim's owner and when another sender may take it over.
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    leased_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # Attempts after which the outcome was unknown: the whole message went out but the server's
    # answer was lost (disconnect, or later than EMAIL_TIMEOUT). It may have arrived once more.
    possibly_delivered = models.PositiveSmallIntegerField(
        default=0, help_text="Attempts whose message went out whole but whose answer never came."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "email"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["message_id"], name="dbmail_message_id_unique"),
            # A request never yields two emails to one mailbox, whatever the case of the address.
            models.UniqueConstraint(
                "request",
                Lower("to_address"),
                condition=Q(request__isnull=False),
                name="dbmail_one_email_per_address",
            ),
        ]
        indexes = [
            # The claim query walks these in order; partial so they stay small.
            models.Index(
                fields=["next_attempt_at", "id"], condition=Q(status__in=list(states.WAITING)), name="dbmail_due"
            ),
            models.Index(fields=["leased_until"], condition=Q(status=states.EmailStatus.SENDING), name="dbmail_lease"),
            # While a destination group waits for its budget, the claim asks for the other groups' due
            # mail (dbmail.send.pacing.Pacer.claimable, ranges of dest_group around the waiting ones):
            # this lets PostgreSQL read just those rows, instead of walking a waiting backlog of a
            # million in dbmail_due for every claim (bench/backlog.py measures both).
            models.Index(
                fields=["dest_group", "next_attempt_at", "id"],
                condition=Q(status__in=list(states.WAITING)),
                name="dbmail_waiting_group",
            ),
        ]

    def __str__(self):
        return f"{self.to_address}: {self.subject[:60]}"

    @classmethod
    def counts(cls, emails):
        """Emails per status in `emails` (a queryset), waiting ones of inactive sender accounts as "held"."""
        rows = list(emails.values_list("status", "account_id").annotate(n=Count("id")).order_by())
        return cls.shown_counts(rows)

    @classmethod
    def shown_counts(cls, rows):
        """Emails per shown status from (status, account id, n) rows (see counts)."""
        accounts = {account for status, account, n in rows if account is not None and status in states.WAITING}
        inactive = set(SenderAccount.objects.filter(pk__in=accounts, active=False).values_list("pk", flat=True))
        counts = {}
        for status, account, n in rows:
            shown = states.HELD if status in states.WAITING and account in inactive else status
            counts[shown] = counts.get(shown, 0) + n
        return counts

    def shown_status(self):
        """The status as the panel and admin show it ("held" for waiting mail of an inactive account)."""
        if self.status in states.WAITING and self.account_id and not self.account.active:
            return states.HELD
        return self.status

    @classmethod
    def cancel(cls, emails, actor=None):
        """Cancel the waiting ones among `emails` (a queryset); return how many. Each gets its event."""
        now = timezone.now()
        return cls._act(
            emails, states.CANCEL, actor, "cancel", status_changed_at=now, claim_token=None, leased_until=None
        )

    @classmethod
    def retry_now(cls, emails, actor=None):
        """Make deferred and dropped emails due now, with a fresh attempt budget; return how many."""
        now = timezone.now()
        return cls._act(
            emails, states.RETRY, actor, "retry now", status_changed_at=now, next_attempt_at=now, attempts=0
        )

    @classmethod
    def _act(cls, emails, transition, actor, text, **changes):
        """Move `emails` along a human transition, writing an event (who, when) for exactly each one moved.

        Rows are locked first, in chunks, skipping those a sender holds at this
        moment (they are not waiting any more), so the events name exactly the
        emails that changed.
        """
        from django.db import transaction

        name = actor.get_username() if actor is not None else ""
        by = f"{text} by {name}" if name else text
        chosen = cls.objects.filter(
            pk__in=emails.order_by().values("pk")
        )  # plain rows: lockable whatever `emails` joins
        moved, last = 0, 0
        while True:
            with transaction.atomic():
                ids = list(
                    chosen.filter(status__in=transition.sources, pk__gt=last)
                    .order_by("pk")
                    .select_for_update(skip_locked=True)
                    .values_list("pk", flat=True)[:_ACTION_CHUNK]
                )
                if not ids:
                    return moved
                moved += transition.update(cls.objects.filter(pk__in=ids), **changes)
                DeliveryEvent.objects.bulk_create(
                    DeliveryEvent(
                        email_id=pk,
                        at=changes["status_changed_at"],
                        kind=DeliveryEvent.Kind.ADMIN,
                        outcome=transition.target,
                        text=by,
                        actor=actor,
                        actor_name=name,
                    )
                    for pk in ids
                )
            last = ids[-1]


class DeliveryEvent(models.Model):
    """The log of one email: every SMTP attempt, admin action and (later) tracking event."""

    class Kind(models.TextChoices):
        ATTEMPT = "attempt"
        TRACKING = "tracking"
        ADMIN = "admin"

    # Indexed by (email, at) below, which also serves lookups by email. No database constraint: the
    # sender writes an attempt for every email sent, and PostgreSQL checked each one at the commit
    # (a row lock and a query per event, docs/scaling.md#what-keeps-a-sender-fast). Django's CASCADE
    # still deletes an email's events with it, and dbmail_purge deletes them in the same transaction
    # after the emails (dbmail.ops.purge), so a log row written meanwhile goes too.
    email = models.ForeignKey(
        TextOfEmail, on_delete=models.CASCADE, related_name="events", db_index=False, db_constraint=False
    )
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    outcome = models.CharField(max_length=16, help_text="The email's status this event led to.")
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    text = models.TextField(blank=True)
    # Who, for an action a person took (kind "admin"); empty for what the machinery did.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    # A database default too: the sender's raw-SQL insert of attempts leaves these columns out.
    actor_name = models.CharField(
        max_length=150, blank=True, default="", db_default="", help_text="The actor's username then."
    )

    class Meta:
        ordering = ["email", "at", "id"]
        indexes = [models.Index(fields=["email", "at"], name="dbmail_event_email")]

    def __str__(self):
        code = f" {self.smtp_code}" if self.smtp_code else ""
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind}{code} -> {self.outcome}"


def actor_name(user):
    """The username an event keeps for `user` ("" for none, or for an anonymous visitor)."""
    return user.get_username() if user is not None and getattr(user, "is_authenticated", False) else ""


class AuditEventQuerySet(models.QuerySet):
    """AuditEvents are written once: no bulk update or delete through the ORM (the database refuses them too)."""

    def record(self, user, action, target, *, detail="", request=None, kind="", by="", at=None):
        """One AuditEvent: `user` (or, with no user, the program `by`) did `action` to `target`. Returns it.

        The one writer of a single AuditEvent (dbmail.audit.record, for the logic, is this): here so
        that a model's own step (MessageRequest.cancel) is recorded without the models importing logic.
        `kind` marks a step of a request's history (AuditEvent.Kind); its detail is kept whole, line
        breaks and all (a failure's traceback), where a person's action's detail is one line.
        """
        if request is None:
            if isinstance(target, MessageRequest):
                request = target
            elif isinstance(target, TextOfEmail) and target.request_id:
                request = target.request
        name = actor_name(user)
        extra = {} if at is None else {"at": at}
        return self.create(
            actor=user if name else None,
            actor_name=name or by or "(unknown)",
            action=action[:50],
            target_type=target._meta.label_lower,
            target_id=str(target.pk or "")[:64],
            target=str(target)[:300],
            request=request if request is not None and request.pk else None,
            detail=str(detail) if kind else " ".join(str(detail).split())[:5000],
            kind=kind,
            **extra,
        )

    def update(self, **kwargs):
        raise PermissionError("an AuditEvent is never changed")

    def delete(self):
        raise PermissionError("an AuditEvent is never deleted")


class AuditEvent(models.Model):
    """Who did what, when, on what: a person's action or the machinery's step. Written once (dbmail.audit).

    Sending, scheduling, cancelling or retrying a request or an email, approving
    or rejecting a held post, suppressing or unsuppressing an address, changing
    a sender account, a list or a grant: each leaves one row here (an email's
    own history also gets a DeliveryEvent naming the actor). A request's own
    history is here too, each step with its `kind`: its expansion failing
    (dbmail_cron), the reputation guard pausing it (dbmail_track), and a
    person's retry, cancel or resume. Nothing updates or deletes a row: the
    model and its queryset refuse, and so does a trigger in the database
    (migration 0020_events), which lets through only the foreign keys' SET NULL
    when a user or a draft request is deleted.
    """

    class Kind(models.TextChoices):
        # The steps of a request's life its history names; other actions have none.
        FAILURE = "failure", "expansion failed"
        RETRY = "retry", "retried"
        CANCEL = "cancel", "cancelled by hand"
        PAUSE = "pause", "paused by the reputation guard"
        RESUME = "resume", "resumed"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    actor_name = models.CharField(max_length=150, help_text="The actor's username then (kept if the user goes).")
    action = models.CharField(max_length=50, help_text='What was done, e.g. "cancel" or "approve".')
    target_type = models.CharField(max_length=100, help_text="The model acted on, e.g. dbmail.messagerequest.")
    target_id = models.CharField(max_length=64, blank=True)
    target = models.CharField(max_length=300, blank=True, help_text="What it was called then.")
    # The request page shows its history from here; kept when a draft is deleted.
    request = models.ForeignKey(
        MessageRequest, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    detail = models.TextField(blank=True)
    kind = models.CharField(
        max_length=16,
        choices=Kind.choices,
        blank=True,
        default="",
        help_text="For a step in a request's history: which (failure, retry, cancel, pause, resume).",
    )

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="dbmail_audit_target")]
        verbose_name = "audit event"

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name or '?'} {self.action} {self.target}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise PermissionError("an AuditEvent is never changed")
        return super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("an AuditEvent is never deleted")


def _key_not_installed(address):
    raise RuntimeError("Suppression.key is installed by dbmail's AppConfig.ready(): Django is not set up")


class SuppressionQuerySet(models.QuerySet):
    def of(self, address):
        """The suppression of the mailbox `address` names, however it is written (a queryset of at most one)."""
        return self.filter(address=Suppression.key(address))

    def add(self, address, reason, note=""):
        """(row, created): `address` suppressed for `reason` unless its mailbox already is (its first reason stays)."""
        return self.get_or_create(address=Suppression.key(address), defaults={"reason": reason, "note": note[:500]})


class Suppression(models.Model):
    """Addresses that get no more mail: unsubscribed, hard-bounced, complained or blocked by hand.

    What a suppression stops depends on its reason, and this is the one place
    that says so: an unsubscribe stops bulk mail (requests, list forwards)
    only, since the person still wants the mail they ask for (a password
    reset, a reply from a mailbox); a hard bounce, a complaint or a block by
    hand stops all mail to the address, transactional included, until an
    admin lifts it (deletes the row; dbmail.content.lifting says who may). Bulk mail leaves suppressed addresses
    out when it picks its recipients; everything else is dropped when it is
    made, with `refusal()` as the reason.

    `address` is the mailbox's key (`Suppression.key`), not the address as
    someone wrote it: every writer stores it and every check, raw SQL
    included, compares with it, so a suppression of one spelling
    (anna@bücher.example, "anna"@XN--BCHER-KVA.example.) stops all the others.
    """

    class Reason(models.TextChoices):
        UNSUBSCRIBED = "unsubscribed"
        BOUNCED = "bounced"
        COMPLAINED = "complained"
        MANUAL = "manual"

    # Sending to an address that bounced or complained hurts the sender's reputation, whatever the mail is.
    STOPS_ALL_MAIL = (Reason.BOUNCED, Reason.COMPLAINED, Reason.MANUAL)
    _CAUSE = {
        Reason.UNSUBSCRIBED: "unsubscribed",
        Reason.BOUNCED: "hard bounce",
        Reason.COMPLAINED: "complaint",
        Reason.MANUAL: "blocked by hand",
    }

    address = models.CharField(
        max_length=254, unique=True, help_text="Stored as the mailbox's key: lower-case, the domain in A-labels."
    )
    reason = models.CharField(max_length=16, choices=Reason.choices, default=Reason.MANUAL)
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = SuppressionQuerySet.as_manager()

    # The key of a mailbox: dbmail.content.addresses.mailbox_key, which the app's ready() puts here,
    # since the models import no logic (tests/test_models.py). Until then, nothing can be keyed.
    key = staticmethod(_key_not_installed)

    class Meta:
        ordering = ["address"]
        # The dashboard counts unsubscribes per day.
        indexes = [models.Index(fields=["created_at"], condition=Q(reason="unsubscribed"), name="dbmail_unsub_day")]

    def __str__(self):
        return f"{self.address} ({self.reason})"

    def save(self, *args, **kwargs):
        self.address = self.key(self.address)
        super().save(*args, **kwargs)

    def clean(self):
        self.address = self.key(self.address)  # before validate_unique, which a form runs next

    @property
    def stops_all_mail(self):
        return self.reason in self.STOPS_ALL_MAIL

    @property
    def stops(self):
        """The rule in words, as the suppression lists show it."""
        return "all mail" if self.stops_all_mail else "bulk mail only"

    def refusal(self):
        """Why an email to this address is dropped: "suppressed: hard bounce on 2026-11-30"."""
        cause = self._CAUSE.get(self.reason, self.reason)
        return f"suppressed: {cause} on {timezone.localdate(self.created_at):%Y-%m-%d}"

    @classmethod
    def stopping_all_mail(cls, addresses):
        """{mailbox key: suppression} for those of `addresses` that get no mail at all."""
        keys = {cls.key(a) for a in addresses if a}
        if not keys:
            return {}
        rows = cls.objects.filter(address__in=keys, reason__in=cls.STOPS_ALL_MAIL)
        return {row.address: row for row in rows}


class DkimKey(models.Model):
    """One DKIM key of a domain, under one selector (dbmail.ops.dkimkeys makes them, dbmail.send.dkim signs).

    A domain's newest active key signs its mail; an older active key stays
    published (its DNS record is still wanted: mail signed with it may be
    checked for days) until it is retired. The private key is written once,
    when the key is made, and never shown again.
    """

    class Algorithm(models.TextChoices):
        RSA = "rsa-sha256", "rsa-sha256"
        ED25519 = "ed25519-sha256", "ed25519-sha256"

    domain = models.CharField(max_length=253, help_text="Stored lower-case.")
    selector = models.CharField(max_length=63)
    algorithm = models.CharField(max_length=16, choices=Algorithm.choices, default=Algorithm.RSA)
    # RSA: PKCS#1 PEM; Ed25519: the base64 32-byte seed (dkimpy's formats). Never shown again.
    private_key = models.TextField(editable=False)
    public_key = models.TextField(editable=False, help_text="The p= value of the DNS record (base64).")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    active = models.BooleanField(default=True, editable=False, help_text="Published; the newest active key signs.")
    retired_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["domain", "-created_at", "-id"]
        verbose_name = "DKIM key"
        constraints = [models.UniqueConstraint(fields=["domain", "selector"], name="dbmail_dkim_selector_once")]

    def __str__(self):
        return f"{self.selector}._domainkey.{self.domain}"

    def save(self, *args, **kwargs):
        self.domain = self.domain.strip().lower()
        super().save(*args, **kwargs)

    @property
    def key_type(self):
        """The k= tag of the DNS record."""
        return "ed25519" if self.algorithm == self.Algorithm.ED25519 else "rsa"


class UnsignedMail(models.Model):
    """How many emails went out without a DKIM signature, per From domain and day (no key for the domain)."""

    domain = models.CharField(max_length=253)
    day = models.DateField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-day", "domain"]
        verbose_name = "unsigned mail"
        verbose_name_plural = "unsigned mail"
        constraints = [models.UniqueConstraint(fields=["domain", "day"], name="dbmail_unsigned_domain_day")]

    def __str__(self):
        return f"{self.domain} {self.day}: {self.count}"


class SendingProblem(models.Model):
    """The last failure of an account's SMTP server that was no recipient's fault, for dbmail_status.

    Connection, session and sender failures (the server unreachable, a 421,
    EHLO, STARTTLS, AUTH or MAIL FROM refused) defer mail without counting
    attempts; the run that gave up on a server writes it here once. A later
    run that sends through that server marks it resolved.
    """

    key = models.CharField(max_length=600, unique=True, editable=False)
    account = models.ForeignKey(
        SenderAccount, null=True, blank=True, on_delete=models.CASCADE, related_name="sending_problems"
    )
    server = models.CharField(max_length=300, help_text="host:port")
    stage = models.CharField(max_length=16, help_text="Where in the SMTP conversation it failed.")
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    text = models.TextField()
    emails_deferred = models.PositiveIntegerField(
        default=0, help_text="Emails it deferred in the run that saw it last."
    )
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self):
        who = self.account.address if self.account_id else "site"
        return f"{who} via {self.server}: {self.text[:80]}"


# --- Pacing (dbmail.send.pacing, backoff, caps): budgets shared by every host through the database ---


class PacingBucket(models.Model):
    """The shared budget of one destination group (or of all mail: "*"), a token bucket refilled at its rate.

    A sender takes a grant for a batch in the transaction that claims it. A
    group whose mail server pushes back (421, 4.7.x) is slowed here for every
    host: its rate halves (at most once every half minute, never below
    DBMAIL_BACKOFF_FLOOR_PER_MINUTE) and recovers by
    DBMAIL_BACKOFF_RECOVERY_PERCENT of its configured rate each minute
    without pushback (dbmail.send.backoff).
    """

    name = models.CharField(max_length=40, primary_key=True)
    tokens = models.FloatField(default=0, help_text="Emails that may go now.")
    refilled_at = models.DateTimeField(default=timezone.now)
    configured_per_minute = models.FloatField(default=0, help_text="The rate the settings give it (0: no limit).")
    slowed_per_minute = models.FloatField(
        null=True, blank=True, help_text="The rate its last pushback left it at; it recovers from there."
    )
    slowed_since = models.DateTimeField(null=True, blank=True)
    last_pushback_at = models.DateTimeField(null=True, blank=True)
    last_halved_at = models.DateTimeField(null=True, blank=True)
    pushbacks = models.PositiveIntegerField(default=0, help_text="Pushbacks since it was slowed.")
    pushback_text = models.CharField(max_length=500, blank=True, help_text="What the server said last.")

    class Meta:
        ordering = ["name"]
        verbose_name = "pacing bucket"

    def __str__(self):
        return self.name


class DestinationLimit(models.Model):
    """An admin's change to one destination group's limits, over what the settings give it.

    The groups themselves (their names and domains) come from the settings
    (DBMAIL_DESTINATION_GROUPS over the built-in ones, dbmail.send.destinations):
    a domain's group is stored on each email when it is made. Their two figures
    can also be changed here, for every host at once and without a restart
    (senders read these rows at most REFRESH_SECONDS late: dbmail.send.limits).
    An empty figure keeps the settings' value; 0 switches that limit off.
    """

    REFRESH_SECONDS = 5

    group = models.CharField(max_length=40, primary_key=True, help_text="A destination group of the settings.")
    rate_per_minute = models.FloatField(
        null=True,
        blank=True,
        help_text="Emails a minute to this group, all hosts together; 0: no limit; empty: as the settings say.",
    )
    max_connections = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Senders sending to this group at once; 0: no limit; empty: as the settings say.",
    )
    note = models.CharField(max_length=300, blank=True, help_text="Why (a provider's limit, a warm-up).")
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["group"]
        constraints = [
            models.CheckConstraint(
                condition=Q(rate_per_minute__isnull=True) | Q(rate_per_minute__gte=0), name="dbmail_limit_rate"
            ),
            models.CheckConstraint(
                condition=Q(max_connections__isnull=True) | Q(max_connections__lte=1000),
                name="dbmail_limit_connections",
            ),
        ]

    def __str__(self):
        return self.group


class ConnectionSlot(models.Model):
    """One of a destination group's max_connections: the sender run holding it may send to that group."""

    group = models.CharField(max_length=40)
    slot = models.PositiveSmallIntegerField()
    holder = models.UUIDField(null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["group", "slot"]
        constraints = [models.UniqueConstraint(fields=["group", "slot"], name="dbmail_connection_slot")]

    def __str__(self):
        return f"{self.group}#{self.slot}"


class SenderDailyCount(models.Model):
    """Emails a sender account's daily cap let through on one UTC day, counted for all hosts together."""

    account = models.ForeignKey(SenderAccount, on_delete=models.CASCADE, related_name="daily_counts")
    day = models.DateField()
    taken = models.PositiveIntegerField(default=0, help_text="Places taken that day: emails claimed to be tried.")

    class Meta:
        ordering = ["-day", "account"]
        constraints = [models.UniqueConstraint(fields=["account", "day"], name="dbmail_sender_day")]

    def __str__(self):
        return f"{self.account_id} {self.day}: {self.taken}"


class CronHeartbeat(models.Model):
    """The last run of a command on one host, so an outage cannot go unnoticed."""

    command = models.CharField(max_length=50)
    host = models.CharField(max_length=255)
    last_started_at = models.DateTimeField(null=True)
    last_success_at = models.DateTimeField(null=True)
    last_summary = models.JSONField(default=dict)
    last_error = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["command", "host"], name="dbmail_heartbeat_host")]

    def __str__(self):
        return f"{self.command}@{self.host}"


# --- Comm panel: saved templates and attachments -------------------------------------------


class EmailTemplate(models.Model):
    """A reusable starting point for composing (subject and bodies, as Django templates)."""

    name = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=998, blank=True)
    text_body = models.TextField(blank=True)
    html_body = models.TextField(blank=True)
    body_format = models.CharField(max_length=16, choices=BodyFormat.choices, default=BodyFormat.HTML)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


# --- XML spool (seed 003): the files other programs drop, and the emails they became ---


class SpoolFile(models.Model):
    """One file taken in from DBMAIL_SPOOL_DIR; its name and content hash make a re-scan harmless."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued (in the spool directory)"
        DEFERRED = "deferred", "deferred (in defer/)"
        SENT = "sent", "sent (in sent/)"
        DROPPED = "dropped", "dropped (in drop/)"

    OPEN = (Status.QUEUED, Status.DEFERRED)

    name = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # Where the file is now, relative to the spool directory ("" once it is gone).
    location = models.CharField(max_length=600)
    reason = models.TextField(blank=True, help_text="Why the file was dropped.")
    received_at = models.DateTimeField(default=timezone.now)
    # When the file reached sent/ or drop/; retention counts from here.
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["name", "sha256"], name="dbmail_spool_file_once")]
        indexes = [models.Index(fields=["status", "settled_at"], name="dbmail_spool_status")]

    def __str__(self):
        return self.name


def _attachment_path(instance, filename):
    return f"dbmail/attachments/{timezone.now():%Y/%m}/{filename}"


def _pending_path(instance, filename):
    return f"dbmail/pending/{timezone.now():%Y/%m}/{filename}"


class PendingUpload(models.Model):
    """A file uploaded with a compose form that did not save, kept for the next try (a day at most).

    Only its owner may use it: the form looks ids up among the owner's rows.
    """

    class Kind(models.TextChoices):
        CSV = "csv"
        ATTACHMENT = "attachment"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    file = models.FileField(upload_to=_pending_path, max_length=500)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    size = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.filename


class RequestAttachment(models.Model):
    """A file sent with every email of a request, kept through Django's storage API."""

    request = models.ForeignKey(MessageRequest, on_delete=models.CASCADE, related_name="attachments")
    file = models.FileField(upload_to=_attachment_path, max_length=500)
    filename = models.CharField(max_length=255, help_text="The name recipients see.")
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    size = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.filename


class SpoolItem(models.Model):
    """The link from an email back to the <item> of the spool file it came from."""

    email = models.OneToOneField(TextOfEmail, on_delete=models.CASCADE, related_name="spool_item")
    file = models.ForeignKey(SpoolFile, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField(help_text="1 for the file's first <item>.")
    fld_time = models.DateTimeField(help_text="The item's own time stamp.")

    class Meta:
        ordering = ["file", "position"]

    def __str__(self):
        return f"{self.file.name} #{self.position}"


# --- The table queue (seed 003, SOWASQL): rows other programs insert, and the emails they became ---


class QueueTableMail(models.Model):
    """The default queue table, shaped as the seed's tbl_mails (dbmail.intake.tablequeue).

    Producers write it with plain SQL (INSERT INTO tbl_mails (fld_time, fld_sender, fld_address,
    fld_topic, fld_content) VALUES ...); the sender reads and updates it with plain SQL too, so
    DBMAIL_SMAILER_TABLE may name a site's own table of the same shape instead. Unmanaged: the
    migration creates it only where no such table exists yet, and never drops it.
    """

    id = models.BigAutoField(primary_key=True)
    fld_time = models.DateTimeField(db_default=Now())
    fld_sender = models.TextField()
    fld_address = models.TextField()
    fld_topic = models.TextField(db_default="")
    fld_content = models.TextField(db_default="")
    # '' waiting, T taken into the outbox, S sent, d deferred (retried), D dropped (fld_reason says why).
    fld_status = models.CharField(max_length=1, db_default="", blank=True)
    fld_reason = models.TextField(db_default="", blank=True)

    class Meta:
        managed = False
        db_table = "tbl_mails"
        verbose_name = "queue table mail"
        indexes = [
            models.Index(
                fields=["id"], condition=Q(fld_status="") | Q(fld_status__isnull=True), name="tbl_mails_waiting"
            )
        ]

    def __str__(self):
        return f"#{self.pk} {self.fld_sender} => {self.fld_address}"


class QueueTableItem(models.Model):
    """The link from an email back to the queue table row it came from; (database, table, row) is taken once."""

    email = models.OneToOneField(TextOfEmail, on_delete=models.CASCADE, related_name="table_item")
    database = models.CharField(max_length=100, blank=True, help_text="The row's database alias; blank: this site's.")
    table = models.CharField(max_length=200)
    row_id = models.BigIntegerField()
    fld_time = models.DateTimeField(help_text="The row's own time stamp.")
    written = models.CharField(max_length=1, help_text="The fld_status last written to the row.")
    # When S or D was written: the row is done and no longer watched.
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["database", "table", "row_id"]
        constraints = [
            models.UniqueConstraint(fields=["database", "table", "row_id"], name="dbmail_table_row_once"),
        ]
        indexes = [models.Index(fields=["id"], condition=Q(settled_at__isnull=True), name="dbmail_table_row_open")]

    def __str__(self):
        return f"{self.table} #{self.row_id}"


# --- Delivery tracking (dbmail.track): the queue's database backend and the job's memory ---


class TrackingQueueItem(models.Model):
    """One event waiting in the database backend of the tracking queue (used when no RabbitMQ is set)."""

    payload = models.JSONField()
    enqueued_at = models.DateTimeField(default=timezone.now)
    # Held by a consumer until acknowledged; an expired lease (the consumer died) makes it visible again.
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    leased_until = models.DateTimeField(null=True, blank=True)
    deliveries = models.PositiveIntegerField(default=0, help_text="How often it was handed to a consumer.")

    class Meta:
        ordering = ["id"]
        verbose_name = "tracking queue item"

    def __str__(self):
        return f"#{self.pk} {self.payload.get('event', '?') if isinstance(self.payload, dict) else '?'}"


class AppliedTrackingEvent(models.Model):
    """The key (source:event_id) of every tracking event already applied, so a redelivery changes nothing."""

    key = models.CharField(max_length=300, unique=True)
    applied_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.key


class UnmatchedTrackingEvent(models.Model):
    """A tracking event for no email of ours (or one that could not be read): kept, counted, never dropped."""

    class Reason(models.TextChoices):
        UNKNOWN_EMAIL = "unknown-email", "no such email"
        INVALID = "invalid", "invalid event"

    key = models.CharField(max_length=300, db_index=True)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    error = models.CharField(max_length=500, blank=True)
    event = models.CharField(max_length=16, blank=True)
    message_id = models.CharField(max_length=255, blank=True, db_index=True)
    recipient = models.CharField(max_length=254, blank=True)
    occurred_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=100, blank=True)
    payload = models.JSONField(help_text="The event as received.")
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self):
        return f"{self.event or '?'} {self.message_id or '-'} ({self.get_reason_display()})"


class LogCursor(models.Model):
    """How far the log follower has read an MTA log, so a restart neither skips nor rereads much."""

    path = models.CharField(max_length=500, unique=True)
    inode = models.BigIntegerField()
    offset = models.BigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.path} @ {self.offset}"


class WebhookSignature(models.Model):
    """Signatures of accepted tracking callbacks within the replay window: the same request twice is refused."""

    signature = models.CharField(max_length=128, unique=True)
    seen_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self):
        return self.signature[:16]


# --- Comm panel dashboard: outcomes counted per day (dbmail.rollup writes and reads it) ---

# The outcomes counted, each a column named after the email status it counts.
DAILY_STATUS_COUNTS = tuple(
    s.value
    for s in (
        states.EmailStatus.SENT,
        states.EmailStatus.DELIVERED,
        states.EmailStatus.DEFERRED,
        states.EmailStatus.BOUNCED,
        states.EmailStatus.COMPLAINED,
        states.EmailStatus.DROPPED,
    )
)
# Of the bounced, those reported permanent (a hard bounce): not a status of its own, since a bounce's
# kind does not change where an email stands, but the figure the reputation guard judges.
HARD_BOUNCED = "hard_bounced"
_AFTER = DAILY_STATUS_COUNTS.index(states.EmailStatus.BOUNCED) + 1  # shown beside "bounced"
DAILY_COUNTS = (*DAILY_STATUS_COUNTS[:_AFTER], HARD_BOUNCED, *DAILY_STATUS_COUNTS[_AFTER:])


class DailyCounts(models.Model):
    """How many emails of one sender account and request reached each outcome on one day (site's date).

    Plain ids, no foreign keys: deleting a request or an account keeps what was sent in the totals.
    """

    COUNTS = DAILY_COUNTS

    day = models.DateField()
    account_id = models.BigIntegerField(null=True, blank=True)
    request_id = models.BigIntegerField(null=True, blank=True)
    sent = models.PositiveIntegerField(default=0, help_text="Accepted by the mail server (250).")
    delivered = models.PositiveIntegerField(default=0)
    deferred = models.PositiveIntegerField(default=0, help_text="Attempts refused for now (4xx, no connection).")
    bounced = models.PositiveIntegerField(default=0)
    complained = models.PositiveIntegerField(default=0)
    dropped = models.PositiveIntegerField(default=0, help_text="Refused for good while sending, or rejected later.")
    # A database default too: the sender's raw-SQL insert of its deltas counts statuses only.
    hard_bounced = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Of the bounced, those reported permanent (hard), each email once."
    )

    class Meta:
        abstract = True

    def __str__(self):
        return f"{self.day} account {self.account_id} request {self.request_id}"


class DailyStat(DailyCounts):
    """The roll-up: one row per day, account and request, merged by dbmail_cron from the deltas."""

    class Meta:
        constraints = [
            # One row per key; the merge's upsert relies on it.
            models.UniqueConstraint(
                "day",
                Coalesce("account_id", models.Value(0)),
                Coalesce("request_id", models.Value(0)),
                name="dbmail_dailystat_key",
            )
        ]
        indexes = [
            models.Index(fields=["day"], name="dbmail_dailystat_day"),
            models.Index(fields=["request_id"], name="dbmail_dailystat_request"),
        ]


class DailyStatDelta(DailyCounts):
    """Counts added by the send and tracking paths, in the transaction of the outcomes they count.

    Append-only and unindexed (but its key), so concurrent senders never wait for one counter row
    and a write costs one small insert; dbmail_cron folds these into DailyStat. Readers add both.
    """


# --- The sending API (dbmail.intake.api): one answer per idempotency key, and the rate counters ---


class ApiSend(models.Model):
    """One POST /api/v1/send/: the emails it made, under the caller's Idempotency-Key.

    The unique (user, key) constraint is what makes a repeated key harmless,
    even for two requests at the same moment on two hosts: the second insert
    waits for the first transaction and then fails, and the second request
    answers with the first one's emails.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255, null=True, blank=True, help_text="The Idempotency-Key header, if any.")
    payload_sha256 = models.CharField(max_length=64, help_text="Of the request as understood: a reused key must match.")
    emails = models.ManyToManyField(TextOfEmail, related_name="api_sends")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        verbose_name = "API send"
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="dbmail_api_send_once")]

    def __str__(self):
        return f"#{self.pk} by {self.user_id}" + (f" ({self.key})" if self.key else "")


class ApiRateCounter(models.Model):
    """Sending calls one user made to the API in the current window of DBMAIL_API_SEND_RATE.

    In the database, so every process and host counts against the same number
    (Django's default cache is each process's own memory).
    """

    ident = models.CharField(max_length=100, unique=True)
    slot = models.BigIntegerField(help_text="Which window: seconds since the epoch // the window's length.")
    hits = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"{self.ident}: {self.hits} in window {self.slot}"
