"""The messages API (seed 002's email/Profiles, Accounts, Folders, Messages) under /api/v1/."""

from django.conf import settings
from django.db import transaction
from django.db.models import F, ProtectedError
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from drf_spectacular.views import SpectacularAPIView
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response

from dbmail import audit
from dbmail.intake import grants
from dbmail.intake.api.throttling import LoginRateThrottle
from dbmail.models import SendGrant
from mailgate.mailboxes import imap, outgoing
from mailgate.mailboxes.api import permissions
from mailgate.mailboxes.api.serializers import (
    AccountSerializer,
    FolderSerializer,
    GrantSerializer,
    MessageSerializer,
    PartSerializer,
    ProfileSerializer,
)
from mailgate.models import MailAccount, MailFolder, MailServerProfile, Message, MessagePart

BINARY = {(200, "application/octet-stream"): OpenApiTypes.BINARY}


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema: for signed-in users, or for anyone with API_SCHEMA_PUBLIC (read per request)."""

    def get_permissions(self):
        return [AllowAny() if settings.API_SCHEMA_PUBLIC else IsAuthenticated()]


class TokenView(ObtainAuthToken):
    """POST username and password, get the user's token; DBMAIL_API_LOGIN_RATE attempts per username (429 past it)."""

    throttle_classes = [LoginRateThrottle]


class ProfileViewSet(viewsets.ModelViewSet):
    queryset = MailServerProfile.objects.all()
    serializer_class = ProfileSerializer
    permission_classes = [IsAuthenticated, permissions.StaffWritesProfiles]

    def perform_update(self, serializer):
        outgoing.sync_profile(serializer.save())

    def destroy(self, request, *args, **kwargs):
        try:
            return super().destroy(request, *args, **kwargs)
        except ProtectedError:
            return Response(
                {"detail": "Accounts still use this profile; move or delete them first."},
                status=status.HTTP_409_CONFLICT,
            )


class DiscoveryResult(serializers.Serializer):
    added = serializers.ListField(child=serializers.CharField())
    error = serializers.CharField()


class AccountViewSet(viewsets.ModelViewSet):
    """Creating an account connects to its IMAP server and stores its folders (disabled)."""

    serializer_class = AccountSerializer
    queryset = MailAccount.objects.none()  # for the schema; get_queryset decides

    def get_queryset(self):
        accounts = MailAccount.objects.select_related("profile").order_by("address")
        return permissions.visible_accounts(self.request, accounts)

    def perform_create(self, serializer):
        with transaction.atomic():
            account = serializer.save(owner=self.request.user)
            _sync(account)
        imap.discover_quietly(account)  # an unreachable server is the account's last_error, not a failed create
        account.refresh_from_db()

    def perform_update(self, serializer):
        with transaction.atomic():
            _sync(serializer.save())

    @extend_schema(request=None, responses=DiscoveryResult)
    @action(detail=True, methods=["post"])
    def discover(self, request, pk=None, format=None):
        """List the account's folders again and store the new ones."""
        account = self.get_object()
        try:
            added = imap.discover(account)
        except imap.MailboxError as exc:
            return Response({"added": [], "error": str(exc)}, status=status.HTTP_502_BAD_GATEWAY)
        return Response({"added": added, "error": ""})


def _sync(account):
    try:
        outgoing.sync_sender(account)
    except outgoing.AddressTaken as exc:  # taken between validation and now: the atomic block undoes the save
        raise serializers.ValidationError({"address": [str(exc)]}) from None


class GrantViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The addresses you may send as through the site's own server (granted by staff, to you or a group)."""

    serializer_class = GrantSerializer
    queryset = SendGrant.objects.none()  # for the schema; get_queryset decides

    def get_queryset(self):
        return grants.grants_of(self.request.user).select_related("group").order_by("address", "id")


class FolderViewSet(viewsets.ModelViewSet):
    serializer_class = FolderSerializer
    queryset = MailFolder.objects.none()  # for the schema; get_queryset decides

    def get_queryset(self):
        folders = MailFolder.objects.select_related("account").order_by("account__address", "name")
        folders = permissions.visible_by_account(self.request, folders, "mailfolder")
        account = self.request.query_params.get("account")
        return folders.filter(account=account) if account and account.isdigit() else folders


def _moment(name, value):
    """(value, lookup suffix) for a date-time, or a date compared by day (so date_before includes that day)."""
    try:
        day = parse_date(value)
        moment = None if day else parse_datetime(value)
    except ValueError:
        day = moment = None
    if day is not None:
        return day, "date__"
    if moment is None:
        raise serializers.ValidationError({name: f"Not a date or date-time: {value!r}"})
    return (timezone.make_aware(moment) if timezone.is_naive(moment) else moment), ""


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=[s.value for s in Message.Status]),
            OpenApiParameter("direction", str, enum=[d.value for d in Message.Direction]),
            OpenApiParameter("folder", int),
            OpenApiParameter("account", int),
            OpenApiParameter("date_after", str, description="ISO date or date-time (the Date header, else stored)."),
            OpenApiParameter("date_before", str, description="ISO date or date-time; a date includes that day."),
        ]
    )
)
class MessageViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Messages read from folders, and outgoing ones: create one (status `sending`) to send it."""

    serializer_class = MessageSerializer
    queryset = Message.objects.none()  # for the schema; get_queryset decides

    def get_queryset(self):
        messages = Message.objects.prefetch_related("parts").annotate(when=Coalesce(F("date"), F("created_at")))
        messages = permissions.visible_by_account(self.request, messages, "message").order_by("-when", "-id")
        params = self.request.query_params
        for name in ("status", "direction"):
            if params.get(name):
                messages = messages.filter(**{name: params[name]})
        for name in ("folder", "account"):
            if params.get(name):
                if not params[name].isdigit():
                    raise serializers.ValidationError({name: "Give the numeric id."})
                messages = messages.filter(**{f"{name}_id": int(params[name])})
        if params.get("date_after"):
            moment, by_day = _moment("date_after", params["date_after"])
            messages = messages.filter(**{f"when__{by_day}gte": moment})
        if params.get("date_before"):
            moment, by_day = _moment("date_before", params["date_before"])
            messages = messages.filter(**{f"when__{by_day}{'lte' if by_day else 'lt'}": moment})
        return messages

    def perform_create(self, serializer):
        message = serializer.save()
        audit.record(self.request.user, "send (API)", message, detail=f"from {message.account}")
        # At once, after the commit; if the server is down the cron run (mailgate_imap) tries again.
        transaction.on_commit(lambda: outgoing.send(message), robust=True)

    @extend_schema(request=None, responses=MessageSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None, format=None):
        """Send an outgoing message in `error` again (it becomes `sending`)."""
        message = self.get_object()
        if not outgoing.retry(message):
            return Response({"detail": "Only outgoing messages in error can be sent again."}, status=409)
        audit.record(request.user, "retry (API)", message)
        transaction.on_commit(lambda: outgoing.send(message), robust=True)
        message.refresh_from_db()
        return Response(self.get_serializer(message).data)

    def _part(self, kind, position):
        message = self.get_object()
        return get_object_or_404(MessagePart, message=message, kind=kind, position=position)

    @extend_schema(responses=PartSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def attachments(self, request, pk=None, format=None):
        parts = self.get_object().parts.filter(kind=MessagePart.Kind.ATTACHMENT)
        return Response(PartSerializer(parts, many=True, context=self.get_serializer_context()).data)

    @extend_schema(responses=PartSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def inlines(self, request, pk=None, format=None):
        parts = self.get_object().parts.filter(kind=MessagePart.Kind.INLINE)
        return Response(PartSerializer(parts, many=True, context=self.get_serializer_context()).data)

    @extend_schema(responses=BINARY)
    @action(detail=True, methods=["get"], url_path=r"attachments/(?P<position>\d+)", url_name="attachment")
    def attachment(self, request, pk=None, position=None, format=None):
        return _file_response(self._part(MessagePart.Kind.ATTACHMENT, int(position)))

    @extend_schema(responses=BINARY)
    @action(detail=True, methods=["get"], url_path=r"inlines/(?P<position>\d+)", url_name="inline")
    def inline(self, request, pk=None, position=None, format=None):
        return _file_response(self._part(MessagePart.Kind.INLINE, int(position)))

    @extend_schema(responses={(200, "text/html"): OpenApiTypes.STR})
    @action(detail=True, methods=["get"])
    def html(self, request, pk=None, format=None):
        message = self.get_object()
        if not message.html:
            raise Http404("This message has no HTML body.")
        with message.html.open("rb") as handle:
            return HttpResponse(handle.read(), content_type="text/html; charset=utf-8")

    @extend_schema(responses={(200, "message/rfc822"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def raw(self, request, pk=None, format=None):
        """The original RFC 822 bytes (incoming), or the bytes handed to the SMTP server (outgoing)."""
        message = self.get_object()
        data = message.raw
        if data is None:
            first = message.outbox.exclude(raw_message=None).order_by("pk").first()
            data = bytes(first.raw_message) if first else None
        if data is None:
            raise Http404("Not composed yet.")
        response = HttpResponse(data, content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="message-{message.pk}.eml"'
        return response


def _file_response(part):
    with part.file.open("rb") as handle:
        response = HttpResponse(handle.read(), content_type=part.content_type or "application/octet-stream")
    filename = (part.filename or f"part-{part.position}").replace('"', "")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response
