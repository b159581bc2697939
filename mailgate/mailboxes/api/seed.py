"""Seed 002's own names for the messages API: the same views, the fields the seed names spelled its way.

A client written for the email processor reads and writes
/rest/v1/model/email/{Profiles,Accounts,Folders,Messages}/ (mailgate.mailboxes.api.seed_urls)
with the same token, the same permissions and the same statuses (`sending`,
`sent`, `error`, `received`, `raw` are Message.Status already). What differs
is only what the seed names: a folder's `deleteOnServer`, and a message's
`html` and `rawMessage`, which the seed keeps as file fields, so they read
as links to the file (null when there is none); `html` is still written as
the HTML body, and the parts' links point at the seed's paths.
"""

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.decorators import action

from mailgate.mailboxes.api import views
from mailgate.mailboxes.api.serializers import FolderSerializer, MessageSerializer
from mailgate.models import Message, MessagePart

SEED_PART_URL_NAMES = {
    MessagePart.Kind.ATTACHMENT: "seed-message-attachment",
    MessagePart.Kind.INLINE: "seed-message-inline",
}


def _link(context, name, message):
    path = reverse(name, kwargs={"pk": message.pk})
    request = context.get("request")
    return request.build_absolute_uri(path) if request else path


class SeedFolderSerializer(FolderSerializer):
    deleteOnServer = serializers.BooleanField(  # noqa: N815 (the seed's name)
        source="delete_on_server", required=False, help_text="Delete each message on the server once stored."
    )

    class Meta(FolderSerializer.Meta):
        fields = ["deleteOnServer" if name == "delete_on_server" else name for name in FolderSerializer.Meta.fields]


@extend_schema_field(OpenApiTypes.STR)
class HtmlField(serializers.CharField):
    """Written: the HTML body. Read: the link to it (the seed's `html` file field), null when there is none."""

    def get_attribute(self, message):
        return message

    def to_representation(self, message):
        return _link(self.context, "seed-message-html", message) if message.html else None


class SeedMessageSerializer(MessageSerializer):
    html = HtmlField(required=False, allow_blank=True, help_text="The HTML body; read back as its link.")
    rawMessage = serializers.SerializerMethodField(  # noqa: N815 (the seed's name)
        help_text="Link to the RFC 822 bytes (received, or handed to the SMTP server)."
    )

    class Meta(MessageSerializer.Meta):
        fields = [*MessageSerializer.Meta.fields, "rawMessage"]

    def get_rawMessage(self, message) -> str | None:  # noqa: N802
        if message.inbound_id is None and message.direction != Message.Direction.OUTGOING:
            return None
        return _link(self.context, "seed-message-raw-message", message)


class SeedFolderViewSet(views.FolderViewSet):
    serializer_class = SeedFolderSerializer


class SeedMessageViewSet(views.MessageViewSet):
    serializer_class = SeedMessageSerializer
    part_url_names = SEED_PART_URL_NAMES

    @extend_schema(responses={(200, "message/rfc822"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"], url_path="rawMessage", url_name="raw-message")
    def raw_message(self, request, pk=None):
        """The original RFC 822 bytes (incoming), or the bytes handed to the SMTP server (outgoing)."""
        return self.raw(request, pk=pk)
