"""The sending API under /api/v1/: requests to many people, and one transactional email.

Token authentication and the comm panel's permission (MayCompose); a user
reads only what they made, staff read everything; calls that send count
against DBMAIL_API_SEND_RATE (429 with Retry-After past it).
"""

import re

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Count
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from dbmail import audit, states
from dbmail.content import attachments, validation
from dbmail.intake.api import permissions, transactional
from dbmail.intake.api.serializers import (
    CancelResultSerializer,
    EmailSerializer,
    RequestCreateSerializer,
    RequestListSerializer,
    RequestSerializer,
    RetryResultSerializer,
    ScheduleSerializer,
    SendResultSerializer,
    SendSerializer,
    plain_data,
)
from dbmail.intake.api.throttling import SendRateThrottle
from dbmail.models import ApiSend, AuditEvent, MessageRequest, TextOfEmail

EmailStatus = states.EmailStatus
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces
_SENDING_ACTIONS = {"create", "schedule", "retry"}


class _SendingViewSet(viewsets.GenericViewSet):
    permission_classes = [permissions.MayCompose]

    def get_throttles(self):
        return [SendRateThrottle()] if self.action in _SENDING_ACTIONS else []


def _counts_by_request(mails):
    """{request id: {shown status: n}} for a page of requests, from one grouped query (purged emails included)."""
    grouped = TextOfEmail.objects.filter(request__in=mails).values_list("request_id", "status", "account_id")
    rows = {}
    for request_id, *row in grouped.annotate(n=Count("id")).order_by():
        rows.setdefault(request_id, []).append(row)
    counts = {}
    for mail in mails:
        per = counts[mail.pk] = dict(mail.purged_counts or {})
        for shown, n in TextOfEmail.shown_counts(rows.get(mail.pk, [])).items():
            per[shown] = per.get(shown, 0) + n
    return counts


def _status_filter(params):
    """The ?status= values (comma-separated) as email statuses; 400 for an unknown one."""
    wanted = [s.strip() for s in params.get("status", "").split(",") if s.strip()]
    unknown = [s for s in wanted if s not in EmailStatus.values]
    if unknown:
        raise serializers.ValidationError(
            {"status": [f"Unknown status {unknown[0][:30]!r}; one of {', '.join(EmailStatus.values)}."]}
        )
    return wanted


STATUS_PARAMETER = OpenApiParameter(
    "status", str, description="Comma-separated statuses: " + ", ".join(EmailStatus.values)
)


class RequestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _SendingViewSet):
    """Requests to many people: a sender account, templates, recipients, when."""

    queryset = MessageRequest.objects.none()  # for the schema; get_queryset decides

    def get_queryset(self):
        mails = MessageRequest.objects.select_related("sender", "creator").order_by("-created_at", "-pk")
        mails = permissions.visible_requests(self.request.user, mails)
        if self.action == "list" and self.request.query_params.get("status"):
            wanted = self.request.query_params["status"]
            if wanted not in states.RequestStatus.values:
                raise serializers.ValidationError({"status": [f"One of {', '.join(states.RequestStatus.values)}."]})
            mails = mails.filter(status=wanted)
        return mails

    def get_serializer_class(self):
        return {"list": RequestListSerializer, "create": RequestCreateSerializer}.get(self.action, RequestSerializer)

    @extend_schema(parameters=[OpenApiParameter("status", str, enum=states.RequestStatus.values)])
    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        serializer = RequestListSerializer(
            page, many=True, context={**self.get_serializer_context(), "counts": _counts_by_request(page)}
        )
        return self.get_paginated_response(serializer.data)

    @extend_schema(request=RequestCreateSerializer, responses={201: RequestSerializer})
    def create(self, request, *args, **kwargs):
        """Make a request (queued, or a draft with `draft: true`); bad rows are listed, or left out on request."""
        data = plain_data(
            request, structured=("recipient_params", "rows", "context", "attachments"), repeated=("rows",)
        )
        serializer = RequestCreateSerializer(data=data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        mail = serializer.validated_data["request"]
        with transaction.atomic():
            mail.save()
            for upload in serializer.files:
                attachments.add(mail, upload)
            action = "create draft (API)" if mail.status == states.RequestStatus.DRAFT else "create (API)"
            audit.record(request.user, action, mail)
        context = {**self.get_serializer_context(), "left_out": serializer.left_out}
        return Response(RequestSerializer(mail, context=context).data, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[STATUS_PARAMETER], responses=EmailSerializer(many=True))
    @action(detail=True, methods=["get"])
    def emails(self, request, pk=None):
        """Each recipient's email and what became of it (paginated; ?status= filters)."""
        mail = self.get_object()
        emails = mail.emails.order_by("id")
        wanted = _status_filter(request.query_params)
        if wanted:
            emails = emails.filter(status__in=wanted)
        page = self.paginate_queryset(emails)
        return self.get_paginated_response(EmailSerializer(page, many=True).data)

    @extend_schema(request=None, responses=CancelResultSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Stop the request: nothing more is made, and its unsent emails are cancelled."""
        mail = self.get_object()
        before = mail.status_counts().get(EmailStatus.CANCELLED, 0)
        cancelled = mail.status in states.CANCEL_REQUEST.sources
        if cancelled:
            mail.cancel(actor=request.user, via="API")  # its history records the step
        stopped = mail.status_counts().get(EmailStatus.CANCELLED, 0) - before
        return Response({"id": mail.pk, "status": mail.status, "cancelled_emails": stopped})

    @extend_schema(
        request=None,
        responses={200: RetryResultSerializer, 409: OpenApiResponse(description="The request has not failed.")},
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Queue a failed request again (once its cause is fixed): expansion resumes from its checkpoint."""
        mail = self.get_object()
        text = mail.retry(user=request.user)
        if not text:
            return Response({"detail": "Only a failed request can be retried."}, status=status.HTTP_409_CONFLICT)
        audit.record(request.user, "retry (API)", mail, detail=text, kind=AuditEvent.Kind.RETRY)
        return Response({"id": mail.pk, "status": mail.status})

    @extend_schema(
        request=ScheduleSerializer,
        responses={200: RequestSerializer, 409: OpenApiResponse(description="Not a draft.")},
    )
    @action(detail=True, methods=["post"])
    def schedule(self, request, pk=None):
        """Queue a draft, now or at `send_at`; everything is checked once more first."""
        self.get_object()  # 404 for what the user may not see, before any lock
        when = ScheduleSerializer(data=request.data)
        when.is_valid(raise_exception=True)
        with transaction.atomic():
            mail = MessageRequest.objects.select_for_update().get(pk=pk)
            if mail.status not in states.SCHEDULE.sources:
                return Response({"detail": "Only a draft can be queued."}, status=status.HTTP_409_CONFLICT)
            try:
                validation.full_clean(mail)
            except DjangoValidationError as exc:  # it became invalid since (its sender was switched off...)
                raise serializers.ValidationError(exc.message_dict) from None
            mail.send_at = when.validated_data.get("send_at") or timezone.now()
            mail.status = states.SCHEDULE.target
            mail.save(update_fields=["send_at", "status"])
            audit.record(request.user, "schedule (API)", mail, detail=f"to go out at {mail.send_at:%Y-%m-%d %H:%M %Z}")
        return Response(RequestSerializer(mail, context=self.get_serializer_context()).data)


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    location=OpenApiParameter.HEADER,
    description="Your id for this email (printable ASCII, up to 255): the same key again makes nothing new "
    "and answers with the first email (200); with another payload, 422.",
)


class SendViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _SendingViewSet):
    """One transactional email, sent at once (and retried by dbmail_cron if the server is down)."""

    serializer_class = SendResultSerializer
    queryset = ApiSend.objects.none()  # for the schema; get_queryset decides

    def get_queryset(self):
        sends = ApiSend.objects.prefetch_related("emails").order_by("-id")
        return permissions.visible_sends(self.request.user, sends)

    @extend_schema(
        request=SendSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: SendResultSerializer,
            200: OpenApiResponse(SendResultSerializer, description="The key was used before: its email."),
            422: OpenApiResponse(description="The key was used before with another payload."),
        },
    )
    def create(self, request, *args, **kwargs):
        key = request.headers.get("Idempotency-Key")
        if key is not None and not _KEY.fullmatch(key):
            raise serializers.ValidationError({"Idempotency-Key": ["1 to 255 printable ASCII characters, no spaces."]})
        serializer = SendSerializer(data=plain_data(request, structured=("headers", "attachments"), repeated=("cc",)))
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        files = transactional.files_of(data.pop("files"))
        try:
            send, made = transactional.send_once(request.user, key, data, files)
        except transactional.KeyReused as exc:
            return Response({"detail": str(exc), "id": exc.send.pk}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        send = ApiSend.objects.prefetch_related("emails").get(pk=send.pk)  # the statuses after the send just run
        return Response(SendResultSerializer(send).data, status=status.HTTP_201_CREATED if made else status.HTTP_200_OK)
