"""A request's attachments: stored through Django's storage API, read once per send run.

The sender asks `for_email` for every email; the files of a request are
read on its first email and kept while the emails that follow are of the
same request (a claimed batch comes ordered by request), so a request to
20,000 people reads each file about once per batch, not once per email,
and a sender never holds more than one request's files.
"""

import mimetypes

from django.core.exceptions import ValidationError
from django.template.defaultfilters import filesizeformat

from dbmail.conf import settings as conf
from dbmail.models import RequestAttachment


def check_size(new_files, existing_bytes=0):
    """Refuse uploads that would take a request's attachments over DBMAIL_MAX_ATTACHMENT_BYTES."""
    limit = conf.DBMAIL_MAX_ATTACHMENT_BYTES
    total = existing_bytes + sum(f.size for f in new_files)
    if total > limit:
        raise ValidationError(
            f"Attachments come to {filesizeformat(total)}; the limit per request is {filesizeformat(limit)} "
            "(DBMAIL_MAX_ATTACHMENT_BYTES). Link to large files instead."
        )


def add(request, uploaded, content_type=""):
    """Store one uploaded file on `request`."""
    content_type = content_type or getattr(uploaded, "content_type", "") or mimetypes.guess_type(uploaded.name)[0]
    return RequestAttachment.objects.create(
        request=request,
        file=uploaded,
        filename=uploaded.name[:255],
        content_type=content_type or "application/octet-stream",
        size=uploaded.size,
    )


def copy(source, target):
    """Give `target` its own copies of `source`'s attachments (reusing a request)."""
    from django.core.files.base import ContentFile

    for att in source.attachments.all():
        with att.file.open("rb") as fh:
            content = ContentFile(fh.read(), name=att.filename)
        RequestAttachment.objects.create(
            request=target, file=content, filename=att.filename, content_type=att.content_type, size=att.size
        )


def read(request_id):
    """[(filename, bytes, content type), ...] of one request, in upload order."""
    files = []
    for att in RequestAttachment.objects.filter(request_id=request_id):
        with att.file.open("rb") as fh:
            files.append((att.filename, fh.read(), att.content_type))
    return files


class Cache:
    """The attachments of the request last asked for (one query and one read per run of its emails)."""

    def __init__(self):
        self._request_id, self._files = None, []

    def for_email(self, email):
        if email.request_id is None or email.raw_message is not None:
            return []
        if email.request_id != self._request_id:
            self._request_id, self._files = None, []  # the last request's files go before the next are read
            self._files, self._request_id = read(email.request_id), email.request_id
        return self._files
