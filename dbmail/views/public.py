"""The public web version of a request (ESP's `public`): the mail as anyone would see it, no recipient data."""

from django.http import Http404
from django.shortcuts import get_object_or_404, render

from .. import preview, rendering
from ..models import MessageRequest


def web_version(request, public_id):
    mail = get_object_or_404(MessageRequest.objects.exclude(status=MessageRequest.Status.DRAFT), public_id=public_id)
    if not mail.public:
        raise Http404
    try:
        rendered = preview.public_version(mail)
    except rendering.RenderError:
        raise Http404 from None
    return render(request, "commpanel/web_version.html", {"mail": mail, "rendered": rendered})
