"""Comm panel forms: compose (with recipients and attachments), schedule, templates, suppressions, dashboard."""

import json
from dataclasses import dataclass, field
from datetime import timedelta

from django import forms
from django.contrib.auth.models import Group
from django.core.files import File
from django.utils import timezone

from dbmail.content import attachments, authoring, csvmerge, lifting, pasted, recipients, rendering
from dbmail.content.addresses import mailbox_key
from dbmail.content.validation import RequestForm
from dbmail.exceptions import CSVError
from dbmail.intake import grants
from dbmail.models import (
    BodyFormat,
    EmailTemplate,
    MessageRequest,
    PendingUpload,
    RequestAttachment,
    Suppression,
)

SOURCE_SET, SOURCE_PASTE, SOURCE_CSV = "set", "paste", "csv"
# Rows sent through the sending API (dbmail.intake.api.serializers.ROWS_SOURCE): kept and shown like a CSV's.
SOURCE_API = "api"


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    widget = MultipleFileInput

    def clean(self, data, initial=None):
        if isinstance(data, (list, tuple)):
            return [super(MultipleFileField, self).clean(d, initial) for d in data if d]
        return [super().clean(data, initial)] if data else []


@dataclass
class RecipientsVerdict:
    """What saving makes of the recipients chosen: the one answer for the save and the live count.

    `params` holds the usable part even when saving refuses (the good rows of
    a paste or CSV with bad ones), so the live box can count them and list the
    bad ones beside the reason.
    """

    name: str = ""
    params: dict | None = None
    errors: list = field(default_factory=list)  # why saving refuses the choice; empty when it accepts it
    bad: list = field(default_factory=list)  # "line 3: invalid address 'foo@'"
    left_out: list = field(default_factory=list)  # bad lines knowingly left out (shown after saving)
    where: str = "recipient_set"  # the form field the errors belong to

    @property
    def ok(self):
        return not self.errors


class ComposeForm(RequestForm):
    source = forms.ChoiceField(
        label="Recipients",
        choices=[(SOURCE_SET, "A recipient set"), (SOURCE_PASTE, "Paste addresses"), (SOURCE_CSV, "Upload a CSV")],
        widget=forms.RadioSelect,
        initial=SOURCE_SET,
    )
    recipient_set = forms.ChoiceField(label="Set", required=False)
    groups = forms.ModelMultipleChoiceField(
        queryset=Group.objects.order_by("name"), required=False, widget=forms.CheckboxSelectMultiple
    )
    params = forms.CharField(
        label="Parameters (JSON, optional)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": '{"class": "4b"}'}),
        help_text=(
            "Leave it empty for all active users and for staff. Only a set your site added "
            "that asks for parameters reads them, as a JSON object."
        ),
    )
    addresses = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "ann@example.org\nBob Smith <bob@example.org>"}),
        help_text="One per line, or separated by commas, semicolons or spaces; a name may come before each.",
    )
    csv_file = forms.FileField(
        label="CSV file",
        required=False,
        help_text="First row: column names, one of them “email”. Every column becomes a template variable.",
    )
    pending_csv = forms.ModelChoiceField(
        queryset=PendingUpload.objects.none(), required=False, widget=forms.HiddenInput
    )
    skip_bad = forms.BooleanField(
        label="Leave out the bad lines listed",
        required=False,
        help_text="Otherwise addresses with bad lines are refused, so nobody is left out by accident.",
    )
    new_attachments = MultipleFileField(label="Add attachments", required=False)
    pending_attachments = forms.ModelMultipleChoiceField(
        queryset=PendingUpload.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Kept from your last try",
        help_text="Untick a file to leave it out.",
    )
    remove_attachments = forms.ModelMultipleChoiceField(
        queryset=None, required=False, widget=forms.CheckboxSelectMultiple, label="Remove"
    )

    class Meta:
        model = MessageRequest
        fields = ["sender", "reply_to", "subject", "body_format", "text_body", "html_body", "public"]
        widgets = {
            "subject": forms.TextInput(),
            "body_format": forms.RadioSelect,
            "text_body": forms.Textarea(attrs={"rows": 12}),
            "html_body": forms.Textarea(attrs={"rows": 12}),
        }
        labels = {
            "body_format": "Write the HTML part as",
            "text_body": "Text body",
            "html_body": "HTML body",
            "public": "Public web version",
        }

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["body_format"].required = False  # left out, it stays as it was (HTML for a new request)
        self.fields["sender"].queryset = grants.request_senders()
        self.fields["sender"].empty_label = None
        sets = [s for s in recipients.registered_sets() if s.name != "addresses"]
        self.fields["recipient_set"].choices = [(s.name, s.label) for s in sets]
        # The page shows the parameters box only for a set that reads them, with that set's example.
        asks = {s.name: s.params_help for s in sets if s.takes_params and s.name != "groups"}
        self.fields["params"].widget.attrs["data-params-help"] = json.dumps(asks)
        self.fields["remove_attachments"].queryset = RequestAttachment.objects.filter(request_id=self.instance.pk)
        self._mine = PendingUpload.objects.filter(owner_id=getattr(user, "pk", None))
        self.fields["pending_csv"].queryset = self._mine.filter(kind=PendingUpload.Kind.CSV)
        offered = self.data.getlist("pending_attachments") if hasattr(self.data, "getlist") else []
        self._offer_attachments(offered)
        self.verdict = RecipientsVerdict()
        self.csv_report = []  # lines about bad rows left out knowingly
        params = self.instance.recipient_params or {}
        if self.instance.recipient_set and not self.is_bound:
            if self.instance.recipient_set == "addresses":
                source = params.get("source", SOURCE_PASTE)
                self.initial["source"] = SOURCE_CSV if source == SOURCE_API else source
                if source == SOURCE_PASTE:
                    self.initial["addresses"] = "\n".join(_row_line(r) for r in params.get("rows", []))
            else:
                self.initial["source"] = SOURCE_SET
                self.initial["recipient_set"] = self.instance.recipient_set
                if self.instance.recipient_set == "groups":
                    self.initial["groups"] = Group.objects.filter(name__in=params.get("groups", []))
                elif params:
                    self.initial["params"] = json.dumps(params)

    def _offer_attachments(self, ids):
        # Only the files this form carries are offered, never another try's leftovers.
        ids = [int(i) for i in ids if str(i).isdigit()]
        self.fields["pending_attachments"].queryset = self._mine.filter(kind=PendingUpload.Kind.ATTACHMENT, pk__in=ids)

    @property
    def kept_csv(self):
        """The CSV (or API) rows stored on the draft being edited, if any."""
        params = self.instance.recipient_params or {}
        if self.instance.recipient_set == "addresses" and params.get("source") in (SOURCE_CSV, SOURCE_API):
            return params
        return None

    @property
    def pending_csv_upload(self):
        """The CSV file kept from a failed save, when the form refers to one."""
        if self.is_bound:
            value = self["pending_csv"].value()
            return self.fields["pending_csv"].queryset.filter(pk=value).first() if str(value or "").isdigit() else None
        return None

    def clean(self):
        data = super().clean()
        existing = self.instance.attachments.all() if self.instance.pk else []
        removed = {a.pk for a in data.get("remove_attachments") or []}
        kept = data.get("pending_attachments") or []
        try:
            attachments.check_size(
                list(data.get("new_attachments") or []) + list(kept),
                sum(a.size for a in existing if a.pk not in removed),
            )
        except forms.ValidationError as exc:
            self.add_error("new_attachments", exc)
        self.verdict = verdict = self.recipients_verdict()
        if verdict.ok:
            self.instance.recipient_set, self.instance.recipient_params = verdict.name, verdict.params
            self.csv_report = verdict.left_out
        else:
            self.add_error(verdict.where, verdict.errors)
        # Markdown and rich text make the HTML body here, so every check below sees what will be sent.
        body_format = data.get("body_format") or self.instance.body_format
        if "html_body" in data or body_format == BodyFormat.MARKDOWN:
            data["html_body"] = authoring.html_body(body_format, data.get("text_body", ""), data.get("html_body", ""))
        return data

    def content_errors(self):
        errors = super().content_errors()
        if not self.verdict.ok:
            errors.pop("recipient_set", None)  # the recipients' own error says it better
        return errors

    def recipients_verdict(self):
        """The RecipientsVerdict for the submitted choice (needs cleaned_data)."""
        source = self.cleaned_data.get("source")
        if source == SOURCE_PASTE:
            return self._listed_verdict(pasted.parse(self.cleaned_data.get("addresses") or ""), "addresses")
        if source == SOURCE_CSV:
            return self._csv_verdict()
        verdict = RecipientsVerdict(where="recipient_set")
        name = self.cleaned_data.get("recipient_set")
        if not name:
            verdict.errors.append("Choose a recipient set.")
            return verdict
        verdict.name = name
        if name == "groups":
            groups = self.cleaned_data.get("groups") or []
            if not groups:
                verdict.where = "groups"
                verdict.errors.append("Tick at least one group.")
            else:
                verdict.params = {"groups": sorted(g.name for g in groups)}
            return verdict
        verdict.where = "params"
        if not recipients.get_set(name).takes_params:
            verdict.params = {}  # whatever the hidden box still holds is not this set's business
            return verdict
        raw = (self.cleaned_data.get("params") or "").strip()
        try:
            params = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            verdict.errors.append(f"The parameters are not valid JSON: {exc}")
            return verdict
        if not isinstance(params, dict):
            verdict.errors.append('The parameters must be a JSON object, e.g. {"class": "5b"}.')
            return verdict
        verdict.params = params
        return verdict

    def _listed_verdict(self, parsed, field_name, filename=""):
        """Pasted lines or CSV rows: the good ones counted, the bad ones listed, refused unless left out knowingly."""
        what = f"row(s) in {filename}" if filename else "line(s)"
        verdict = RecipientsVerdict(name="addresses", where=field_name, bad=csvmerge.describe_bad(parsed.bad))
        if parsed.rows:
            verdict.params = {"source": SOURCE_CSV if filename else SOURCE_PASTE, "rows": parsed.rows}
        if parsed.bad and not self.cleaned_data.get("skip_bad"):
            verdict.errors = [f"{len(parsed.bad)} bad {what}; fix them, or tick “Leave out the bad lines listed”:"]
            verdict.errors += verdict.bad
        elif parsed.bad:
            verdict.left_out = verdict.bad
        if not parsed.rows and not verdict.errors:
            verdict.errors.append(
                "The file has no rows with an address." if filename else "Paste at least one address."
            )
        return verdict

    def _csv_verdict(self):
        upload = self.cleaned_data.get("csv_file") or self.cleaned_data.get("pending_csv")
        if not upload:
            if self.kept_csv:
                return RecipientsVerdict(name="addresses", params=self.kept_csv, where="csv_file")
            return RecipientsVerdict(where="csv_file", errors=["Choose a CSV file."])
        if isinstance(upload, PendingUpload):
            name = upload.filename
            with upload.file.open("rb") as fh:
                content = fh.read()
        else:
            name = upload.name
            content = upload.read()
            upload.seek(0)
        try:
            parsed = csvmerge.parse(content)
        except CSVError as exc:
            return RecipientsVerdict(where="csv_file", errors=[str(exc)])
        verdict = self._listed_verdict(parsed, "csv_file", filename=name)
        if verdict.params:
            verdict.params.update(filename=name, columns=parsed.columns, left_out=len(parsed.bad))
        return verdict

    def keep_uploads(self):
        """After a failed save: keep this try's CSV and attachments for the next one (they are not sent again).

        The re-shown form refers to them by id; only this user may use those ids.
        """
        if self.user is None or not self.user.pk:
            return
        data = self.data.copy()
        upload = self.files.get("csv_file") if self.files else None
        if upload and not self.has_error("csv_file", code="invalid"):
            kept = _keep(self.user, PendingUpload.Kind.CSV, upload)
            data["pending_csv"] = str(kept.pk)
        for upload in self.files.getlist("new_attachments") if self.files else []:
            kept = _keep(self.user, PendingUpload.Kind.ATTACHMENT, upload)
            data.appendlist("pending_attachments", str(kept.pk))
        self.data = data
        self._offer_attachments(data.getlist("pending_attachments"))

    def error_summary(self):
        """[(anchor id, label, message)] for every error of the form, in the order of the page."""
        rows = [("error-summary", "", message) for message in self.non_field_errors()]
        for bound in self:
            if bound.errors:  # the first message; a list of bad lines stays beside its field
                more = len(bound.errors) - 1
                message = bound.errors[0] + (f" ({more} more below the field)" if more else "")
                rows.append((f"field-{bound.html_name}", bound.label, message))
        return rows

    def save(self, commit=True):
        request = super().save(commit=commit)
        if commit:
            for att in self.cleaned_data.get("remove_attachments") or []:
                att.file.delete(save=False)
                att.delete()
            for upload in self.cleaned_data.get("new_attachments") or []:
                attachments.add(request, upload)
            for kept in self.cleaned_data.get("pending_attachments") or []:
                with kept.file.open("rb") as fh:
                    attachments.add(request, File(fh, name=kept.filename), content_type=kept.content_type)
                _discard(kept)
            if self.cleaned_data.get("pending_csv"):
                _discard(self.cleaned_data["pending_csv"])
        return request


def _keep(user, kind, upload):
    upload.seek(0)
    return PendingUpload.objects.create(
        owner=user,
        kind=kind,
        file=File(upload, name=upload.name),
        filename=upload.name[:255],
        content_type=getattr(upload, "content_type", "") or "application/octet-stream",
        size=upload.size,
    )


def _discard(kept):
    kept.file.delete(save=False)
    kept.delete()


def _row_line(row):
    if isinstance(row, str):
        return row
    return f"{row['name']} <{row['email']}>" if row.get("name") else row.get("email", "")


class ScheduleForm(forms.Form):
    when = forms.ChoiceField(
        choices=[("now", "Send now"), ("later", "Send at")], widget=forms.RadioSelect, initial="now"
    )
    send_at = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
    )

    def clean(self):
        data = super().clean()
        if data.get("when") == "later":
            at = data.get("send_at")
            if not at:
                self.add_error("send_at", "Choose when to send it.")
            elif at < timezone.now():
                self.add_error("send_at", "This time has passed; choose a later one or send now.")
        return data

    def send_time(self):
        return self.cleaned_data["send_at"] if self.cleaned_data["when"] == "later" else timezone.now()


class EmailTemplateForm(forms.ModelForm):
    class Meta:
        model = EmailTemplate
        fields = ["name", "subject", "body_format", "text_body", "html_body"]
        widgets = {
            "subject": forms.TextInput(),
            "body_format": forms.RadioSelect,
            "text_body": forms.Textarea(attrs={"rows": 12}),
            "html_body": forms.Textarea(attrs={"rows": 12}),
        }
        labels = {"body_format": "Write the HTML part as", "text_body": "Text body", "html_body": "HTML body"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["body_format"].required = False

    def clean(self):
        data = super().clean()
        body_format = data.get("body_format") or self.instance.body_format
        data["html_body"] = authoring.html_body(body_format, data.get("text_body", ""), data.get("html_body", ""))
        probe = EmailTemplate(**{k: data.get(k) or "" for k in ("subject", "text_body", "html_body")})
        for name, message in rendering.template_errors(probe).items():
            self.add_error(name, message)
        return data


class SuppressionForm(forms.ModelForm):
    # The list page lays these out in one row without their labels: the placeholders say what goes where.
    address = forms.EmailField(widget=forms.EmailInput(attrs={"placeholder": "Address to suppress"}))

    class Meta:
        model = Suppression
        fields = ["address", "reason", "note"]
        widgets = {"note": forms.TextInput(attrs={"placeholder": "Note (optional)"})}

    def __init__(self, *args, may_lift=True, **kwargs):
        super().__init__(*args, **kwargs)
        if not may_lift:  # only the note of a protected row (dbmail.content.lifting); a forged POST is ignored
            for name in lifting.LIFTING_FIELDS:
                self.fields[name].disabled = True
                self.fields[name].help_text = "Only an admin with “Can delete suppression” may change this."

    def clean_address(self):
        address = mailbox_key(self.cleaned_data["address"])
        if Suppression.objects.filter(address=address).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError("This address is already on the list.")
        return address


class SuppressionImportForm(forms.Form):
    file = forms.FileField(
        label="CSV file",
        help_text="A header row with an “address” or “email” column; “reason” and “note” columns are optional.",
    )
    reason = forms.ChoiceField(
        choices=Suppression.Reason.choices,
        initial=Suppression.Reason.MANUAL,
        help_text="For rows without a reason of their own.",
    )
    note = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.TextInput(attrs={"placeholder": "Note (optional)"}),
        help_text="For rows without a note, e.g. “from the old newsletter tool”.",
    )


class DashboardForm(forms.Form):
    """The dashboard's range of days: the last 30 by default."""

    DEFAULT_DAYS = 30
    MAX_DAYS = 732

    start = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        today = timezone.localdate()
        end = data.get("end") or today
        start = data.get("start") or end - timedelta(days=self.DEFAULT_DAYS - 1)
        if start > end:
            raise forms.ValidationError("“From” is after “To”; choose an earlier start.")
        if (end - start).days >= self.MAX_DAYS:
            raise forms.ValidationError(f"Choose at most {self.MAX_DAYS} days.")
        data["start"], data["end"] = start, end
        return data

    def days(self):
        """(start, end): the valid choice, or the default range when the choice is not valid."""
        if self.is_valid():
            return self.cleaned_data["start"], self.cleaned_data["end"]
        end = timezone.localdate()
        return end - timedelta(days=self.DEFAULT_DAYS - 1), end
