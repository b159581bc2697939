"""Comm panel forms: compose (with recipients and attachments), schedule, templates, suppressions, dashboard."""

import json
from datetime import timedelta
from email.utils import getaddresses

from django import forms
from django.contrib.auth.models import Group
from django.utils import timezone

from dbmail.content import attachments, csvmerge, recipients
from dbmail.content.validation import RequestForm
from dbmail.intake import grants
from dbmail.models import EmailTemplate, MessageRequest, RequestAttachment, Suppression

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
        label="Parameters (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Only for sets that take parameters other than groups.",
    )
    addresses = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "ann@example.org\nBob Smith <bob@example.org>"}),
        help_text="One per line, or separated by commas or semicolons.",
    )
    csv_file = forms.FileField(
        label="CSV file",
        required=False,
        help_text="First row: column names, one of them “email”. Every column becomes a template variable.",
    )
    csv_skip_bad = forms.BooleanField(
        label="Leave out the bad rows listed",
        required=False,
        help_text="Otherwise a file with bad rows is refused, so nobody is left out by accident.",
    )
    new_attachments = MultipleFileField(label="Add attachments", required=False)
    remove_attachments = forms.ModelMultipleChoiceField(
        queryset=None, required=False, widget=forms.CheckboxSelectMultiple, label="Remove"
    )

    class Meta:
        model = MessageRequest
        fields = ["sender", "reply_to", "subject", "text_body", "html_body", "public"]
        widgets = {
            "subject": forms.TextInput(),
            "text_body": forms.Textarea(attrs={"rows": 12}),
            "html_body": forms.Textarea(attrs={"rows": 12}),
        }
        labels = {"text_body": "Text body", "html_body": "HTML body", "public": "Public web version"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["sender"].queryset = grants.request_senders()
        self.fields["sender"].empty_label = None
        self.fields["recipient_set"].choices = [
            (s.name, s.label) for s in recipients.registered_sets() if s.name != "addresses"
        ]
        self.fields["remove_attachments"].queryset = RequestAttachment.objects.filter(request_id=self.instance.pk)
        self.csv_report = []  # lines about bad CSV rows left out knowingly
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

    @property
    def kept_csv(self):
        """The CSV (or API) rows stored on the draft being edited, if any."""
        params = self.instance.recipient_params or {}
        if self.instance.recipient_set == "addresses" and params.get("source") in (SOURCE_CSV, SOURCE_API):
            return params
        return None

    def clean(self):
        data = super().clean()
        existing = self.instance.attachments.all() if self.instance.pk else []
        removed = {a.pk for a in data.get("remove_attachments") or []}
        try:
            attachments.check_size(
                data.get("new_attachments") or [], sum(a.size for a in existing if a.pk not in removed)
            )
        except forms.ValidationError as exc:
            self.add_error("new_attachments", exc)
        try:
            name, params = self.recipients_choice()
        except forms.ValidationError as exc:
            self.add_error(self._recipient_field(), exc)
        else:
            self.instance.recipient_set, self.instance.recipient_params = name, params
        return data

    def _recipient_field(self):
        return {SOURCE_PASTE: "addresses", SOURCE_CSV: "csv_file"}.get(self.cleaned_data.get("source"), "recipient_set")

    def recipients_choice(self):
        """(recipient set name, params) from the submitted choice; ValidationError when unusable."""
        source = self.cleaned_data.get("source")
        if source == SOURCE_PASTE:
            return "addresses", {"source": SOURCE_PASTE, "rows": self._pasted_rows()}
        if source == SOURCE_CSV:
            return "addresses", self._csv_params()
        name = self.cleaned_data.get("recipient_set")
        if not name:
            raise forms.ValidationError("Choose a recipient set.")
        if name == "groups":
            groups = self.cleaned_data.get("groups") or []
            if not groups:
                raise forms.ValidationError("Tick at least one group.")
            return name, {"groups": sorted(g.name for g in groups)}
        raw = (self.cleaned_data.get("params") or "").strip()
        try:
            params = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"The parameters are not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise forms.ValidationError('The parameters must be a JSON object, e.g. {"class": "5b"}.')
        return name, params

    def _pasted_rows(self):
        text = self.cleaned_data.get("addresses") or ""
        rows, bad = [], []
        for name, address in getaddresses([text.replace(";", ",").replace("\n", ",")]):
            if not address and not name:
                continue
            address = recipients.normalise_address(address)
            error = recipients.address_error(address)
            if error:
                bad.append(name or address or "?")
            else:
                rows.append({"email": address, "name": name} if name else {"email": address})
        if bad:
            raise forms.ValidationError(
                f"Not email addresses: {', '.join(bad[:20])}" + (" ..." if len(bad) > 20 else "")
            )
        if not rows:
            raise forms.ValidationError("Paste at least one address.")
        return rows

    def _csv_params(self):
        upload = self.cleaned_data.get("csv_file")
        if not upload:
            if self.kept_csv:
                return self.kept_csv
            raise forms.ValidationError("Choose a CSV file.")
        try:
            parsed = csvmerge.parse(upload.read())
        except csvmerge.CSVError as exc:
            raise forms.ValidationError(str(exc)) from None
        finally:
            upload.seek(0)
        lines = csvmerge.describe_bad(parsed.bad)
        if parsed.bad and not self.cleaned_data.get("csv_skip_bad"):
            raise forms.ValidationError(
                [f"{len(parsed.bad)} bad row(s) in {upload.name}; fix them, or tick “Leave out the bad rows”:"] + lines
            )
        if not parsed.rows:
            raise forms.ValidationError("The file has no rows with an address.")
        self.csv_report = lines
        return {
            "source": SOURCE_CSV,
            "filename": upload.name,
            "columns": parsed.columns,
            "rows": parsed.rows,
            "left_out": len(parsed.bad),
        }

    def save(self, commit=True):
        request = super().save(commit=commit)
        if commit:
            for att in self.cleaned_data.get("remove_attachments") or []:
                att.file.delete(save=False)
                att.delete()
            for upload in self.cleaned_data.get("new_attachments") or []:
                attachments.add(request, upload)
        return request


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
        fields = ["name", "subject", "text_body", "html_body"]
        widgets = {
            "subject": forms.TextInput(),
            "text_body": forms.Textarea(attrs={"rows": 12}),
            "html_body": forms.Textarea(attrs={"rows": 12}),
        }
        labels = {"text_body": "Text body", "html_body": "HTML body"}  # as compose says

    def clean(self):
        from dbmail.content import rendering

        data = super().clean()
        for field, message in rendering.template_errors(
            self.instance.__class__(**{k: data.get(k) or "" for k in ("subject", "text_body", "html_body")})
        ).items():
            self.add_error(field, message)
        return data


class SuppressionForm(forms.ModelForm):
    address = forms.EmailField()

    class Meta:
        model = Suppression
        fields = ["address", "reason", "note"]

    def clean_address(self):
        address = self.cleaned_data["address"].strip().lower()
        if Suppression.objects.filter(address=address).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError("This address is already on the list.")
        return address


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
