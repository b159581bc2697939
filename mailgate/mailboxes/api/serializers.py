"""What the messages API shows and accepts. Account secrets are write-only: never in a response."""

import mimetypes
from email.utils import formataddr

from django.core.files.base import ContentFile
from django.urls import reverse
from rest_framework import serializers

from dbmail.conf import settings as conf
from dbmail.content import headers
from dbmail.models import SendGrant
from mailgate.mailboxes import identity
from mailgate.mailboxes.api import permissions
from mailgate.mailboxes.store import store_part
from mailgate.models import MailAccount, MailFolder, MailServerProfile, Message, MessagePart, validate_options


def _options(value):
    try:
        validate_options(value)
    except Exception as exc:  # ValidationError with a dict: hand its text to DRF
        raise serializers.ValidationError(getattr(exc, "message_dict", {}).get("options", str(exc))) from None
    return value


class ProfileSerializer(serializers.ModelSerializer):
    class Meta:
        model = MailServerProfile
        fields = [
            "id", "name", "imap_host", "imap_port", "imap_ssl", "imap_starttls",
            "smtp_host", "smtp_port", "smtp_starttls", "smtp_ssl", "smtp_auth", "options",
        ]  # fmt: skip

    validate_options = staticmethod(_options)

    def validate(self, data):
        flags = ("imap_ssl", "imap_starttls", "smtp_ssl", "smtp_starttls")
        current = self.instance or MailServerProfile()  # on create, the model's defaults
        merged = {flag: data.get(flag, getattr(current, flag)) for flag in flags}
        if merged["imap_ssl"] and merged["imap_starttls"]:
            raise serializers.ValidationError("IMAP: choose SSL or STARTTLS, not both.")
        if merged["smtp_ssl"] and merged["smtp_starttls"]:
            raise serializers.ValidationError("SMTP: choose SSL or STARTTLS, not both.")
        return data


class AccountSerializer(serializers.ModelSerializer):
    """An address nobody else has (identity.address_refusal); sending as it is checked per message."""

    secret = serializers.CharField(write_only=True, style={"input_type": "password"}, max_length=500)
    owner = serializers.PrimaryKeyRelatedField(read_only=True)
    # Declared, not derived: the model's unique check compares case-sensitively; address_refusal does not.
    address = serializers.EmailField(max_length=254)

    class Meta:
        model = MailAccount
        fields = [
            "id", "owner", "profile", "address", "display_name", "login", "secret", "options", "enabled",
            "discovered_at", "last_error", "created_at",
        ]  # fmt: skip
        read_only_fields = ["discovered_at", "last_error", "created_at"]

    validate_options = staticmethod(_options)

    def validate_address(self, value):
        value = value.strip().lower()
        refusal = identity.address_refusal(value, self.instance)
        if refusal:
            raise serializers.ValidationError(refusal)
        return value


class FolderSerializer(serializers.ModelSerializer):
    class Meta:
        model = MailFolder
        fields = [
            "id", "account", "name", "enabled", "delete_on_server", "route_to_lists", "options",
            "uidvalidity", "last_uid", "last_polled_at", "last_error", "exists_on_server",
        ]  # fmt: skip
        read_only_fields = ["uidvalidity", "last_uid", "last_polled_at", "last_error", "exists_on_server"]

    validate_options = staticmethod(_options)

    def validate_account(self, account):
        request = self.context["request"]
        if not permissions.may_use_account(request, account, "mailfolder"):
            raise serializers.ValidationError("No such account.")
        if self.instance and account != self.instance.account:
            raise serializers.ValidationError("A folder cannot move to another account.")
        return account


PART_URL_NAMES = {
    MessagePart.Kind.ATTACHMENT: "mailbox-message-attachment",
    MessagePart.Kind.INLINE: "mailbox-message-inline",
}


class PartSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = MessagePart
        fields = ["position", "filename", "content_type", "content_id", "size", "url"]

    def get_url(self, part) -> str:
        # The view says under which routes its parts are served (/api/v1/ or seed 002's paths).
        names = getattr(self.context.get("view"), "part_url_names", PART_URL_NAMES)
        path = reverse(names[part.kind], kwargs={"pk": part.message_id, "position": part.position})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


class MessageSerializer(serializers.ModelSerializer):
    html = serializers.CharField(write_only=True, required=False, allow_blank=True, help_text="The HTML body.")
    has_html = serializers.SerializerMethodField()
    attachments = serializers.SerializerMethodField()
    inlines = serializers.SerializerMethodField()
    to = serializers.ListField(child=serializers.EmailField(), required=False)
    cc = serializers.ListField(child=serializers.EmailField(), required=False)
    bcc = serializers.ListField(child=serializers.EmailField(), required=False)
    files = serializers.ListField(
        child=serializers.FileField(),
        write_only=True,
        required=False,
        help_text="Attachments of an outgoing message (multipart/form-data, the field repeated per file).",
    )

    class Meta:
        model = Message
        fields = [
            "id", "direction", "status", "account", "folder", "message_id", "subject", "from_header",
            "to", "cc", "bcc", "date", "headers", "text", "html", "files", "has_html", "attachments", "inlines",
            "truncated", "last_error", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = [
            "direction", "status", "folder", "message_id", "from_header", "date", "headers",
            "truncated", "last_error", "created_at", "updated_at",
        ]  # fmt: skip

    def get_has_html(self, message) -> bool:
        return bool(message.html)

    def _parts(self, message, kind):
        parts = [p for p in message.parts.all() if p.kind == kind]
        return PartSerializer(parts, many=True, context=self.context).data

    def get_attachments(self, message) -> list[dict]:
        return self._parts(message, MessagePart.Kind.ATTACHMENT)

    def get_inlines(self, message) -> list[dict]:
        return self._parts(message, MessagePart.Kind.INLINE)

    def validate_account(self, account):
        request = self.context["request"]
        if not permissions.may_use_account(request, account, "message"):
            raise serializers.ValidationError("No such account.")
        refusal = identity.address_refusal(account.address, account) or identity.sending_refusal(account)
        if refusal:
            raise serializers.ValidationError(refusal)
        return account

    def validate_subject(self, subject):
        # Sent as the Subject header: a line break in it would be a header of the sender's own making,
        # or (CR/LF) a message stuck in "sending" once Django refused to build it (dbmail.content.headers).
        if headers.has_line_break(subject):
            raise serializers.ValidationError("Line breaks and NUL characters are not allowed in a subject.")
        return subject

    def validate_files(self, files):
        total = sum(f.size for f in files)
        if total > conf.DBMAIL_MAX_ATTACHMENT_BYTES:
            raise serializers.ValidationError(
                f"The attachments come to {total} bytes; at most {conf.DBMAIL_MAX_ATTACHMENT_BYTES} are allowed."
            )
        return files

    def validate(self, data):
        if not (data.get("to") or data.get("cc") or data.get("bcc")):
            raise serializers.ValidationError("Give at least one recipient (to, cc or bcc).")
        return data

    def create(self, validated):
        html = validated.pop("html", "")
        files = validated.pop("files", [])
        message = Message(direction=Message.Direction.OUTGOING, status=Message.Status.SENDING, **validated)
        account = message.account
        message.from_header = formataddr((account.display_name, account.address))  # bare address without a name
        message.save()
        if html:
            message.html.save("body.html", ContentFile(html.encode("utf-8")))
        for position, upload in enumerate(files):
            content_type = upload.content_type or mimetypes.guess_type(upload.name)[0]
            store_part(message, MessagePart.Kind.ATTACHMENT, position, upload.name, content_type, upload.read())
        return message


class GrantSerializer(serializers.ModelSerializer):
    via = serializers.SerializerMethodField(help_text='"user" for a grant to you, else the group\'s name.')

    class Meta:
        model = SendGrant
        fields = ["address", "via", "granted_at"]

    def get_via(self, grant) -> str:
        return "user" if grant.user_id else grant.group.name
