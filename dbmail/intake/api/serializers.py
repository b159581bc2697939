"""What the sending API accepts and shows.

Every field is checked for its type and size before anything is made, so a
wrong type, a huge string, junk nested where a string belongs, an invalid
address or a CR/LF smuggled into a header is a 400 naming the field, never a
500. Templates are compiled here (a syntax error names the line); address
rows are checked one by one and the bad ones listed, as the comm panel does
for a CSV file.
"""

import base64
import binascii
import json
import re
from datetime import timedelta
from email.utils import getaddresses, parseaddr

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.files.base import ContentFile
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.content import csvmerge, headers, recipients, validation, variables
from dbmail.content.addresses import mailbox_key
from dbmail.exceptions import DbmailError
from dbmail.intake import grants
from dbmail.intake.api import parsers
from dbmail.models import MessageRequest, RequestAttachment, TextOfEmail

EmailStatus = states.EmailStatus

MAX_ROWS = 100_000
MAX_BODY = 2_000_000  # characters of one template or body
MAX_VARIABLES = 100  # per row, and in `context`
MAX_VALUE = 10_000  # characters of one variable's value
MAX_CC = 50
# A request's rows are stored like a CSV file's (the comm panel keeps and shows them the same way).
ROWS_SOURCE = "api"
# send_at this far in the past is a client's clock, not a mistake; further back is refused.
CLOCK_SKEW = timedelta(minutes=5)

_NAME_VARIABLES = ("name", "first_name", "last_name")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field-name: printable ASCII but ":"
_CONTENT_TYPE = re.compile(r"\A[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*\Z", re.ASCII)  # anchored: RegexField searches
_LINE_BREAK = headers.LINE_BREAKS  # CR and LF, and whatever else the email package breaks a line at
# Headers a caller may set on a transactional email; anything else (From, To, Cc, Bcc, Sender, Date,
# Message-ID, Return-Path, Received, MIME and DKIM fields...) is the site's to write.
HEADER_WHITELIST = (
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "Keywords",
    "Comments",
    "Importance",
    "Priority",
    "X-Priority",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Thread-Topic",
    "Thread-Index",
)
_ALLOWED_HEADERS = {name.lower(): name for name in HEADER_WHITELIST}
_OWN_PREFIX = "x-mailsite-"  # the tracking header and whatever else the site writes


def _json_field(key, value):
    try:
        return parsers.loads(value)
    except ValueError as exc:
        raise serializers.ValidationError({key: [f"Give JSON text in this form field: {exc}."]}) from None


def plain_data(request, structured=(), repeated=()):
    """request.data as a plain dict, whatever the body's type.

    A multipart form's fields named in `structured` are JSON text; those in
    `repeated` may be given once per item (a repeated field that is also
    structured takes JSON objects, or one JSON list); `files` are the uploads.
    """
    data = request.data
    if not hasattr(data, "getlist"):
        return data  # JSON, or anything else the serializer refuses as a whole
    out = {}
    for key in data:
        values = data.getlist(key)
        if key == "files":
            out[key] = values
        elif key in repeated:
            items = []
            for value in values:
                if key in structured and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
                    parsed = _json_field(key, value)
                    items.extend(parsed if isinstance(parsed, list) else [parsed])
                else:
                    items.append(value)
            out[key] = items
        elif key in structured and isinstance(values[-1], str):
            out[key] = _json_field(key, values[-1])
        else:
            out[key] = values[-1]
    return out


def _no_line_breaks(value):
    if _LINE_BREAK.search(value):
        raise serializers.ValidationError("Line breaks and NUL characters are not allowed here.")
    return value


def _one_address(value):
    """(display name, address) of one address written as `ann@x` or `Ann <ann@x>`."""
    _no_line_breaks(value)
    parsed = getaddresses([value])
    if len(parsed) != 1 or not parsed[0][1]:
        raise serializers.ValidationError(f"Give one email address, not {value[:100]!r}.")
    name, address = parsed[0]
    address = recipients.normalise_address(address)
    error = recipients.address_error(address)
    if error:
        why = "" if error.startswith("invalid address") else f" ({error})"  # a domain literal says why
        raise serializers.ValidationError(f"Not an email address: {value[:100]!r}{why}.")
    return name, address


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string", "format": "email"}]})
class SenderField(serializers.Field):
    """A sender account by id or by address; only the ones a request may be sent from.

    With `site_address`, DEFAULT_FROM_EMAIL's address is accepted too (as None: the site itself).
    """

    default_error_messages = {
        "invalid": "Give a sender account's id or address.",
        "unknown": "No sender account you may use has this id or address: {value}.",  # value: a repr, never raw
    }

    def __init__(self, *, site_address=False, **kwargs):
        self.site_address = site_address
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        senders = grants.request_senders()
        if isinstance(data, bool) or not isinstance(data, (int, str)):
            self.fail("invalid")
        if isinstance(data, int) or re.fullmatch(r"[0-9]{1,20}", data.strip()):  # not isdigit(): "²" is one
            number = int(data)
            account = senders.filter(pk=number).first() if 0 < number < 2**63 else None
        else:
            if len(data) > 400 or unstorable_text(data):  # nor may it reach a query
                self.fail("invalid")
            address = parseaddr(_no_line_breaks(data))[1].strip().lower()
            if self.site_address and address == parseaddr(settings.DEFAULT_FROM_EMAIL)[1].lower():
                return None
            account = senders.filter(address=address).first() if address else None
        if account is None:
            self.fail("unknown", value=repr(str(data)[:100]))
        return account

    def to_representation(self, account):
        return account.address if account else parseaddr(settings.DEFAULT_FROM_EMAIL)[1]


class AttachmentSerializer(serializers.Serializer):
    """An attachment inside a JSON body (multipart forms send `files` instead)."""

    filename = serializers.CharField(max_length=255, validators=[_no_line_breaks])
    content_type = serializers.RegexField(_CONTENT_TYPE, max_length=255, required=False)
    content = serializers.CharField(help_text="The file's bytes, base64.", trim_whitespace=False)

    def validate_filename(self, value):
        # A name, not a path: the storage refuses "../x" with an error, and recipients see only the name.
        if "/" in value or "\\" in value or value.strip(".") == "" or unstorable_text(value):
            raise serializers.ValidationError("Give a file name without a path.")
        return value

    def validate_content(self, value):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError("Not base64.") from None


class FilesMixin(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(),
        required=False,
        write_only=True,
        help_text="Attachments (multipart/form-data, the field repeated per file).",
    )
    attachments = AttachmentSerializer(
        many=True, required=False, write_only=True, help_text="Attachments in a JSON body (base64)."
    )

    def uploads(self, attrs):
        """Every attachment as a file object with name, size and content_type; at most DBMAIL_MAX_ATTACHMENT_BYTES."""
        files = list(attrs.pop("files", []))
        for item in attrs.pop("attachments", []):
            upload = ContentFile(item["content"], name=item["filename"])
            upload.content_type = item.get("content_type") or ""
            files.append(upload)
        total, limit = sum(f.size for f in files), conf.DBMAIL_MAX_ATTACHMENT_BYTES
        if total > limit:
            raise serializers.ValidationError(
                {
                    "files": [
                        f"Attachments come to {filesizeformat(total)}; the limit is {filesizeformat(limit)} "
                        "(DBMAIL_MAX_ATTACHMENT_BYTES)."
                    ]
                }
            )
        return files


def unstorable_text(value):
    """Why PostgreSQL's jsonb cannot store `value` (a NUL or a lone surrogate in a key or string), or ""."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "NUL characters are not allowed."
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return "Lone surrogate characters are not allowed."
    return ""


def _scalar_mapping(value, what):
    """A {variable: scalar} mapping, or the reason it is not one."""
    if not isinstance(value, dict):
        return None, f"{what} must be an object of variables."
    if len(value) > MAX_VARIABLES:
        return None, f"{what} has more than {MAX_VARIABLES} variables."
    for key, item in value.items():
        if not isinstance(key, str) or not _VARIABLE.fullmatch(key):
            return None, f"{str(key)[:50]!r} cannot be a template variable (letters, digits and _)."
        if item is not None and not isinstance(item, (str, int, float, bool)):
            return None, f"the value of {key!r} must be text or a number, not a list or object."
        if isinstance(item, str) and len(item) > MAX_VALUE:
            return None, f"the value of {key!r} is longer than {MAX_VALUE} characters."
        if isinstance(item, str) and unstorable_text(item):
            return None, f"the value of {key!r}: {unstorable_text(item)}"
    return value, ""


def clean_rows(rows):
    """(good rows, ["row N: why", ...]) for a request's `rows`: addresses, or objects with "email"."""
    good, bad, seen = [], [], set()
    for number, row in enumerate(rows, 1):
        if isinstance(row, str):
            row = {"email": row}
        variables, error = _scalar_mapping(row, "a row")
        if error:
            bad.append(f"row {number}: {error}")
            continue
        address = variables.get("email")
        if not isinstance(address, str) or not address.strip():
            bad.append(f"row {number}: no email address")
            continue
        name, address = parseaddr(address) if "<" in address else ("", address)
        address = recipients.normalise_address(address)
        error = recipients.address_error(address)
        names = [name, *(variables.get(k) for k in _NAME_VARIABLES)]
        if not error and any(isinstance(n, str) and _LINE_BREAK.search(n) for n in names):
            error = "a line break in a name (names go into the To header)"
        if error:
            bad.append(f"row {number}: {error}")
            continue
        clean = {**variables, "email": address}
        if name and not clean.get("name"):
            clean["name"] = name
        key = mailbox_key(address)
        if key in seen:
            continue  # expansion would leave the repeat (in any spelling) out anyway
        seen.add(key)
        good.append(clean)
    return good, bad


class RequestCreateSerializer(FilesMixin):
    """A request to many people: templates, recipients (a registered set or rows), when."""

    sender = SenderField(help_text="A sender account's id or address (an active one staff manage).")
    reply_to = serializers.EmailField(required=False, allow_blank=True, max_length=254)
    subject = serializers.CharField(max_length=998, validators=[_no_line_breaks], help_text="A Django template.")
    text_body = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_BODY, trim_whitespace=False, help_text="A Django template."
    )
    html_body = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_BODY, trim_whitespace=False, help_text="A Django template."
    )
    recipient_set = serializers.CharField(required=False, max_length=100, help_text="A registered recipient set.")
    recipient_params = serializers.JSONField(required=False, help_text="The set's parameters (a JSON object).")
    rows = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        max_length=MAX_ROWS,
        help_text='Instead of a set: addresses, or objects {"email": ..., "name": ..., any variables}.',
    )
    csv = serializers.FileField(
        required=False,
        help_text="Instead of a set or rows (multipart): a CSV file as the comm panel takes it, one column named email.",
    )
    skip_bad_rows = serializers.BooleanField(
        default=False, help_text="Leave out the bad rows (listed in the answer) instead of refusing the request."
    )
    context = serializers.JSONField(required=False, help_text="Extra template variables for everyone.")
    send_at = serializers.DateTimeField(required=False, help_text="Not sent before this time (default: now).")
    public = serializers.BooleanField(default=False, help_text="Publish a web version (without personal data).")
    draft = serializers.BooleanField(default=False, help_text="Keep it as a draft: nothing is queued yet.")

    def validate_recipient_params(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError('Give a JSON object, e.g. {"groups": ["Teachers"]}.')
        if len(json.dumps(value)) > MAX_BODY:
            raise serializers.ValidationError("Too large.")
        if unstorable_text(value):
            raise serializers.ValidationError(unstorable_text(value))
        return value

    def validate_context(self, value):
        value, error = _scalar_mapping(value, "context")
        if error:
            raise serializers.ValidationError(error)
        return value

    def validate_send_at(self, value):
        if value < timezone.now() - CLOCK_SKEW:
            raise serializers.ValidationError("This time has passed; leave send_at out to send now.")
        return value

    def validate(self, attrs):
        self.left_out = []
        self.files = self.uploads(attrs)
        given = [name for name in ("recipient_set", "rows", "csv") if name in attrs]
        if len(given) != 1:
            raise serializers.ValidationError(
                {"recipient_set": ["Give one of recipient_set (with recipient_params), rows or csv."]}
            )
        if "csv" in attrs:
            attrs["recipient_set"], attrs["recipient_params"] = "addresses", self.csv_params(attrs)
        elif "rows" in attrs:
            rows, bad = clean_rows(attrs.pop("rows"))
            if bad and not attrs.get("skip_bad_rows"):
                raise serializers.ValidationError(
                    {
                        "rows": [
                            f"{len(bad)} bad row(s); fix them, or send skip_bad_rows: true to leave them out:",
                            *bad[:50],
                        ]
                    }
                )
            if not rows:
                raise serializers.ValidationError({"rows": ["No row has a usable address."]})
            self.left_out = bad
            columns = list(dict.fromkeys(key for row in rows for key in row))
            attrs["recipient_set"] = "addresses"
            attrs["recipient_params"] = {
                "source": ROWS_SOURCE,
                "filename": "rows sent through the API",
                "columns": columns,
                "rows": rows,
                "left_out": len(bad),
            }
        elif attrs["recipient_set"] == "addresses":
            raise serializers.ValidationError({"recipient_set": ["Give the addresses as rows."]})
        attrs.pop("skip_bad_rows", None)
        draft = attrs.pop("draft")
        request = MessageRequest(
            creator=self.context["request"].user,
            status=(states.REQUEST_CREATE_DRAFT if draft else states.REQUEST_CREATE).target,
            recipient_params=attrs.pop("recipient_params", {}),
            context=attrs.pop("context", {}),
            **attrs,
        )
        try:
            validation.full_clean(request)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        self.probe(request)
        return {"request": request}

    def csv_params(self, attrs):
        """The recipient parameters of an uploaded CSV file, exactly as the comm panel stores them."""
        upload = attrs.pop("csv")
        try:
            parsed = csvmerge.parse(upload.read())
        except csvmerge.CSVError as exc:
            raise serializers.ValidationError({"csv": [str(exc)]}) from None
        bad = csvmerge.describe_bad(parsed.bad)
        if parsed.bad and not attrs.get("skip_bad_rows"):
            raise serializers.ValidationError(
                {
                    "csv": [
                        f"{len(parsed.bad)} bad row(s); fix them, or send skip_bad_rows: true to leave them out:",
                        *bad,
                    ]
                }
            )
        if not parsed.rows:
            raise serializers.ValidationError({"csv": ["The file has no rows with an address."]})
        self.left_out = bad
        return {
            "source": "csv",
            "filename": upload.name[:255],
            "columns": parsed.columns,
            "rows": parsed.rows,
            "left_out": len(parsed.bad),
        }

    def probe(self, request):
        """Ask the recipient set for its first recipient: parameters it cannot use are a 400 now, not a failure later."""
        try:
            next(recipients.iter_recipients(request.recipient_set, request.recipient_params, chunk_size=1), None)
        except DbmailError as exc:  # whatever a site's set raised, as RecipientSetError; the database's own errors pass
            raise serializers.ValidationError(
                {"recipient_params": [f"The set {request.recipient_set!r} cannot use these parameters: {exc}"]}
            ) from None


class AttachmentInfoSerializer(serializers.ModelSerializer):
    class Meta:
        model = RequestAttachment
        fields = ["filename", "content_type", "size"]


def _rate(part, whole):
    return round(part / whole, 4) if whole else None


# Every status an email is shown in: the stored ones, and "held" (waiting while its sender account is inactive).
SHOWN_STATUSES = (*EmailStatus.values, states.HELD)
_UNFINISHED = (*states.UNFINISHED, states.HELD)


def progress(mail, counts):
    """Where a request's emails are: counts per shown status (zeros included) and the rates that matter."""
    by_status = {status: counts.get(status, 0) for status in SHOWN_STATUSES}
    total = sum(by_status.values())
    accepted = sum(by_status[s] for s in states.ACCEPTED)
    done = sum(by_status[s] for s in states.FINAL)
    E = EmailStatus
    return {
        "total": total,
        "done": done,
        "waiting": sum(by_status[s] for s in _UNFINISHED),
        "percent_done": round(100 * done / total) if total else 0,
        "finished": mail.status in (states.FINISH_EXPANSION.target, states.CANCEL_REQUEST.target)
        and not any(by_status[s] for s in _UNFINISHED),
        "counts": by_status,
        "rates": {
            "accepted": _rate(accepted, total),  # the MTA took it
            E.DELIVERED: _rate(by_status[E.DELIVERED], accepted),
            E.BOUNCED: _rate(by_status[E.BOUNCED], accepted),
            E.COMPLAINED: _rate(by_status[E.COMPLAINED], accepted),
            E.DROPPED: _rate(by_status[E.DROPPED], total),
        },
    }


class ProgressSerializer(serializers.Serializer):
    """For the schema: what `progress` holds."""

    total = serializers.IntegerField()
    done = serializers.IntegerField()
    waiting = serializers.IntegerField()
    percent_done = serializers.IntegerField()
    finished = serializers.BooleanField()
    counts = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Emails per status, zeros included; held: waiting while the sender account is inactive.",
    )
    rates = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="accepted (of all), delivered, bounced, complained (of accepted), dropped (of all); "
        "null while the base is 0.",
    )


class RequestListSerializer(serializers.ModelSerializer):
    sender = serializers.SlugRelatedField(slug_field="address", read_only=True)
    creator = serializers.SlugRelatedField(slug_field="username", read_only=True)
    progress = serializers.SerializerMethodField()
    held = serializers.SerializerMethodField(help_text="Due, but its sender account is inactive: nothing goes out.")

    class Meta:
        model = MessageRequest
        fields = [
            "id", "status", "held", "failure", "failed_at", "sender", "subject", "recipient_set", "send_at",
            "created_at", "expanded_at", "creator", "public", "progress",
        ]  # fmt: skip
        read_only_fields = fields

    def get_held(self, mail) -> bool:
        return mail.held

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, mail):
        counts = self.context.get("counts", {}).get(mail.pk)
        return progress(mail, mail.status_counts() if counts is None else counts)


class RequestSerializer(RequestListSerializer):
    recipient_params = serializers.SerializerMethodField()
    attachments = AttachmentInfoSerializer(many=True, read_only=True)
    web_version_url = serializers.SerializerMethodField()
    left_out = serializers.SerializerMethodField(help_text="The bad rows left out (only when just created).")
    warnings = serializers.SerializerMethodField(
        help_text="Template variables nothing fills (they render empty), each with the closest known name."
    )

    class Meta(RequestListSerializer.Meta):
        fields = [
            *RequestListSerializer.Meta.fields, "reply_to", "text_body", "html_body", "recipient_params",
            "context", "attachments", "web_version_url", "left_out", "warnings",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_recipient_params(self, mail):
        params = dict(mail.recipient_params or {})
        if mail.recipient_set == "addresses":  # the rows can be long: their number and columns only
            params["rows"] = len(params.get("rows") or [])
        return params

    def get_web_version_url(self, mail) -> str | None:
        if not mail.public or not mail.public_id or mail.status == states.RequestStatus.DRAFT:
            return None
        path = reverse("dbmail:web_version", args=[mail.public_id])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path

    def get_left_out(self, mail) -> list[str]:
        return self.context.get("left_out", [])

    def get_warnings(self, mail) -> list[str]:
        return variables.warnings_for(mail)


class EmailSerializer(serializers.ModelSerializer):
    """One recipient's email and what became of it."""

    class Meta:
        model = TextOfEmail
        fields = [
            "id", "to_address", "to_name", "status", "attempts", "sent_at", "status_changed_at",
            "next_attempt_at", "last_error", "message_id",
        ]  # fmt: skip
        read_only_fields = fields


class ScheduleSerializer(serializers.Serializer):
    send_at = serializers.DateTimeField(required=False, help_text="Default: now.")

    validate_send_at = RequestCreateSerializer.validate_send_at


class RetryResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()


class CancelResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    cancelled_emails = serializers.IntegerField(help_text="Unsent emails that will now not go out.")


# --- One transactional email -----------------------------------------------------------------


class SendSerializer(FilesMixin):
    """One email to one address (and copies to `cc`), sent at once."""

    to = serializers.CharField(max_length=400, help_text="One address: ann@example.org or Ann <ann@example.org>.")
    cc = serializers.ListField(
        child=serializers.CharField(max_length=400),
        required=False,
        max_length=MAX_CC,
        help_text="Each gets its own copy; all of them are shown in the Cc header.",
    )
    subject = serializers.CharField(max_length=998, validators=[_no_line_breaks])
    text = serializers.CharField(required=False, allow_blank=True, max_length=MAX_BODY, trim_whitespace=False)
    html = serializers.CharField(required=False, allow_blank=True, max_length=MAX_BODY, trim_whitespace=False)
    from_ = SenderField(
        site_address=True,
        required=False,
        help_text="A sender account's id or address, or DEFAULT_FROM_EMAIL's address (the default).",
    )
    reply_to = serializers.EmailField(required=False, allow_blank=True, max_length=254)
    headers = serializers.DictField(
        child=serializers.CharField(max_length=998, allow_blank=True, validators=[_no_line_breaks]),
        required=False,
        help_text="Extra headers, from this list: " + ", ".join(HEADER_WHITELIST) + ", and X-... (not X-Mailsite-...).",
    )

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")  # `from` is a Python keyword
        return fields

    def validate_to(self, value):
        return _one_address(value)

    def validate_cc(self, values):
        return [_one_address(value) for value in values]

    def validate_headers(self, headers):
        if len(headers) > MAX_VARIABLES:
            raise serializers.ValidationError(f"At most {MAX_VARIABLES} headers.")
        clean = {}
        for name, value in headers.items():
            lowered = name.lower()
            allowed = _ALLOWED_HEADERS.get(lowered) or (
                name if lowered.startswith("x-") and not lowered.startswith(_OWN_PREFIX) else None
            )
            if not _HEADER_NAME.fullmatch(name) or len(name) > 76 or allowed is None:
                raise serializers.ValidationError(f"{name[:80]!r} is not a header you may set.")
            clean[allowed] = value
        return clean

    def validate(self, attrs):
        if not (attrs.get("text", "").strip() or attrs.get("html", "").strip()):
            raise serializers.ValidationError({"text": ["Write a text or an HTML body."]})
        attrs["files"] = self.uploads(attrs)
        return attrs


class SentEmailSerializer(serializers.ModelSerializer):
    to = serializers.CharField(source="to_address")

    class Meta:
        model = TextOfEmail
        fields = ["id", "to", "status", "message_id", "sent_at", "last_error"]
        read_only_fields = fields


class SendResultSerializer(serializers.Serializer):
    """A transactional send: the status of its email to `to`, and each copy's."""

    id = serializers.IntegerField()
    status = serializers.SerializerMethodField(help_text="The status of the email to `to`.")
    created_at = serializers.DateTimeField()
    emails = serializers.SerializerMethodField()

    def _emails(self, send):
        return sorted(send.emails.all(), key=lambda e: e.pk)

    def get_status(self, send) -> str | None:
        emails = self._emails(send)
        return emails[0].status if emails else None  # None once dbmail_purge removed them

    @extend_schema_field(SentEmailSerializer(many=True))
    def get_emails(self, send):
        return SentEmailSerializer(self._emails(send), many=True).data
