"""POST /tracking/events/: the MTA's status callback, authenticated, onto the tracking queue.

Authentication, checked in constant time against every configured secret (so
secrets can be rotated without downtime):
- HMAC: X-Mailsite-Timestamp (Unix seconds) and X-Mailsite-Signature
  ("sha256=" + hex HMAC-SHA256 of "<timestamp>." + body). Requests outside
  TRACKING_WEBHOOK_MAX_AGE seconds of our clock, and a signed request seen
  before, are refused.
- HTTP Basic with one of TRACKING_WEBHOOK_BASIC_AUTH's user:password pairs
  (simpler, no replay protection: use it over HTTPS only).
- "Authorization: Bearer <token>" with one of TRACKING_WEBHOOK_BEARER_TOKENS
  (what many MTAs' status notifiers send; HTTPS only, like Basic).

POST /tracking/events/ takes our own events (dbmail.track.events);
POST /tracking/events/NAME/ takes a sender's own shape, turned into ours by
mapping NAME of TRACKING_WEBHOOK_MAPPINGS (dbmail.track.mappings). Either way
an event without an id gets one derived from its content, so a repeated
callback is applied once (dbmail.track.apply remembers every event id).

The answer is 2xx only once the queue has the events durably; 503 when the
queue is down, so the MTA retries. A refused request changes nothing.
"""

import base64
import binascii
import hashlib
import hmac
import json
import time
from datetime import timedelta

from django.db import DatabaseError, IntegrityError, transaction
from django.http import Http404, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from dbmail.conf import settings as conf
from dbmail.exceptions import WebhookRefused as Refused
from dbmail.models import WebhookSignature
from dbmail.track import mappings, queue
from dbmail.track.events import InvalidEvent, from_dicts
from dbmail.track.queue import QueueUnavailable

TIMESTAMP_HEADER = "X-Mailsite-Timestamp"
SIGNATURE_HEADER = "X-Mailsite-Signature"
MAX_EVENTS = 1000


def sign(secret, timestamp, body):
    """The X-Mailsite-Signature value for a body sent at `timestamp` (what the MTA computes)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _any_equal(expected_values, given):
    # Compare against every candidate without stopping early, so timing reveals nothing.
    matched = False
    for expected in expected_values:
        matched |= hmac.compare_digest(expected.encode(), given.encode())
    return matched


def check_signature(request, body, now=None):
    """Return the accepted signature, or raise Refused."""
    timestamp = request.headers.get(TIMESTAMP_HEADER, "").strip()
    given = request.headers.get(SIGNATURE_HEADER, "").strip()
    if not conf.TRACKING_WEBHOOK_SECRETS:
        raise Refused(401, "signed requests are not accepted here (no TRACKING_WEBHOOK_SECRETS)")
    if not timestamp or not given:
        raise Refused(401, f"both {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    if not timestamp.isdigit():
        raise Refused(400, f"{TIMESTAMP_HEADER} must be Unix seconds")
    if not given.startswith("sha256="):
        given = "sha256=" + given
    if not _any_equal([sign(secret, timestamp, body) for secret in conf.TRACKING_WEBHOOK_SECRETS], given):
        raise Refused(401, "bad signature")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > conf.TRACKING_WEBHOOK_MAX_AGE:
        raise Refused(401, f"{TIMESTAMP_HEADER} is outside the allowed window (check the clocks)")
    return given


def check_basic(request):
    kind, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() != "basic" or not conf.TRACKING_WEBHOOK_BASIC_AUTH:
        raise Refused(401, "authentication required")
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Refused(401, "malformed Basic credentials") from None
    if not _any_equal(conf.TRACKING_WEBHOOK_BASIC_AUTH, given):
        raise Refused(401, "bad credentials")


def check_bearer(token):
    if not conf.TRACKING_WEBHOOK_BEARER_TOKENS:
        raise Refused(401, "Bearer tokens are not accepted here (no TRACKING_WEBHOOK_BEARER_TOKENS)")
    if not token or not _any_equal(conf.TRACKING_WEBHOOK_BEARER_TOKENS, token):
        raise Refused(401, "bad token")


def check_authorization(request):
    """Basic credentials or a Bearer token in the Authorization header, or raise Refused."""
    kind, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if kind.lower() == "bearer":
        check_bearer(value.strip())
    else:
        check_basic(request)


def posted_objects(body):
    """The JSON objects posted (one or a list), as they came; Refused when unusable."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None
    posted = data if isinstance(data, list) else [data]
    if not posted:
        raise Refused(400, "no events")
    if len(posted) > MAX_EVENTS:
        raise Refused(413, f"at most {MAX_EVENTS} events per request")
    return posted


def parse_events(body):
    """Our own events as posted (one or a list), each with a default source; Refused when unusable."""
    events = posted_objects(body)
    for event in events:
        if isinstance(event, dict):
            event.setdefault("source", "webhook")
    return events


def _remember_signature(signature):
    """Record an accepted signature for the replay check; older ones can no longer pass the window."""
    cutoff = timezone.now() - timedelta(seconds=2 * conf.TRACKING_WEBHOOK_MAX_AGE)
    WebhookSignature.objects.filter(seen_at__lt=cutoff).delete()
    try:
        with transaction.atomic():
            WebhookSignature.objects.create(signature=signature)
    except IntegrityError:
        pass  # the same request raced in twice: both copies are queued, the event ids make that harmless


def _error(status, message):
    response = JsonResponse({"error": message}, status=status)
    challenges = []
    if conf.TRACKING_WEBHOOK_BASIC_AUTH:
        challenges.append('Basic realm="tracking", charset="UTF-8"')
    if conf.TRACKING_WEBHOOK_BEARER_TOKENS:
        challenges.append('Bearer realm="tracking"')
    if status == 401 and challenges:
        response["WWW-Authenticate"] = ", ".join(challenges)
    if status == 503:
        response["Retry-After"] = "60"
    return response


def _mapped(mapping, posted):
    """Our events for a sender's posted objects (those mapped to null left out); Refused naming a bad one."""
    events = []
    for index, item in enumerate(posted):
        try:
            ours = mapping.event_dict(item)
        except InvalidEvent as exc:
            raise Refused(400, f"event {index}: {exc}" if len(posted) > 1 else str(exc)) from None
        if ours is not None:
            events.append(ours)
    return events


def _mapping(name):
    try:
        mapping = mappings.parsed(conf.TRACKING_WEBHOOK_MAPPINGS).get(name)
    except mappings.MappingError:
        mapping = None  # refused at start-up and by the system check; here, as unknown
    if mapping is None:
        raise Http404(f"no mapping {name!r} in TRACKING_WEBHOOK_MAPPINGS")
    return mapping


# The MTA posts without cookies or CSRF tokens; the signature, token or Basic credentials authorise it.
@csrf_exempt
@require_POST
def tracking_events(request, mapping=None):
    if not conf.TRACKING_WEBHOOK_ENABLED:
        raise Http404("tracking callbacks are not enabled")
    body = request.body
    try:
        signature = None
        if SIGNATURE_HEADER in request.headers or TIMESTAMP_HEADER in request.headers:
            signature = check_signature(request, body)
        else:
            check_authorization(request)
        mapping = _mapping(mapping) if mapping is not None else None  # names are told to callers who sign in only
        posted = parse_events(body) if mapping is None else posted_objects(body)
        if signature and WebhookSignature.objects.filter(signature=signature).exists():
            raise Refused(409, "this signed request was accepted before (replay)")
        events = posted if mapping is None else _mapped(mapping, posted)
        try:
            checked = from_dicts(events)  # every event is checked before any is queued
        except InvalidEvent as exc:
            raise Refused(400, str(exc)) from None
        if checked:
            queue.publish_many(checked)
        if signature:
            _remember_signature(signature)
    except Refused as exc:
        return _error(exc.status, str(exc))
    except (QueueUnavailable, DatabaseError) as exc:
        return _error(503, f"the tracking queue is unavailable, try again later ({type(exc).__name__})")
    answer = {"accepted": len(checked)}
    if len(checked) != len(posted):
        answer["ignored"] = len(posted) - len(checked)  # mapped to null: acknowledged, not queued
    return JsonResponse(answer, status=202)
