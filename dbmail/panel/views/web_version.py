"""The public web version of a request (ESP's `public`): the mail as anyone would see it, no recipient data."""

from django.http import Http404
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from dbmail.content import rendering
from dbmail.models import MessageRequest
from dbmail.panel import preview


def web_version(request, public_id):
    # Published once its send time has come: a scheduled announcement stays private until then.
    published = MessageRequest.objects.exclude(status=MessageRequest.Status.DRAFT).filter(send_at__lte=timezone.now())
    mail = get_object_or_404(published, public_id=public_id)
    if not mail.public:
        raise Http404
    try:
        rendered = preview.public_version(mail)
    except rendering.RenderError:
        raise Http404 from None
    return render(request, "commpanel/web_version.html", {"mail": mail, "rendered": rendered})
