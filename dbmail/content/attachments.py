"""A request's attachments: stored through Django's storage API, read once per send run.

The sender asks `for_request` for every email; the files of a request are
read on the first email and kept for the rest of the run, so a request to
20,000 people reads each file once per run, not once per email.
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
    """Per-run memory of each request's attachments (one query and one read per request)."""

    def __init__(self):
        self._files = {}

    def for_email(self, email):
        if email.request_id is None or email.raw_message is not None:
            return []
        if email.request_id not in self._files:
            self._files[email.request_id] = read(email.request_id)
        return self._files[email.request_id]
