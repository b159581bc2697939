"""The public web version of a request (ESP's `public`): the mail as anyone would see it, no recipient data."""

import uuid

from django.shortcuts import render
from django.utils import timezone

from dbmail.content import rendering
from dbmail.models import MessageRequest
from dbmail.panel import preview


def web_version(request, public_id):
    # Published once its send time has come: a scheduled announcement stays private until then.
    published = MessageRequest.objects.exclude(status=MessageRequest.Status.DRAFT).filter(send_at__lte=timezone.now())
    try:
        # The URL takes any string: a link cut short or altered in a mail client gets this page too,
        # not the site's bare 404 (with DEBUG on, as under `make run`, a list of the URL patterns).
        mail = published.filter(public=True, public_id=uuid.UUID(public_id)).first()
    except ValueError:
        mail = None
    rendered = None
    if mail is not None:
        try:
            rendered = preview.public_version(mail)
        except rendering.RenderError:
            rendered = None
    if rendered is None:
        # One page for "never existed", "not published (yet)" and "cannot be shown": which one is not the visitor's to learn.
        return render(request, "dbmail/web_version_missing.html", status=404)
    return render(request, "commpanel/web_version.html", {"mail": mail, "rendered": rendered})
