"""Attachments go out with every email of their request, read once per send run."""

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile

from dbmail.content import attachments
from dbmail.intake import expand
from dbmail.models import MessageRequest, RequestAttachment
from dbmail.send.loop import send_due

from .factories import MessageRequestFactory, TextOfEmailFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)


def test_size_limit_counts_existing_and_new_files(settings):
    settings.DBMAIL_MAX_ATTACHMENT_BYTES = 100
    attachments.check_size([SimpleUploadedFile("a", b"x" * 60)], existing_bytes=40)
    with pytest.raises(ValidationError, match="Attachments come to 101"):
        attachments.check_size([SimpleUploadedFile("a", b"x" * 61)], existing_bytes=40)


def test_request_attachments_arrive_with_every_email_and_are_read_once(smtp_server, monkeypatch):
    for name in ("ann", "bob", "cy"):
        UserFactory(username=name)
    mail = MessageRequestFactory(status=MessageRequest.Status.QUEUED)
    attachments.add(mail, SimpleUploadedFile("plan.pdf", b"%PDF-1.4 plan", content_type="application/pdf"))
    attachments.add(mail, SimpleUploadedFile("notes.txt", b"notes"))
    expand.expand(expand.claim_request())
    adhoc = TextOfEmailFactory()  # mail outside any request has no attachments

    reads = []
    real_read = attachments.read
    monkeypatch.setattr(attachments, "read", lambda pk: reads.append(pk) or real_read(pk))
    assert send_due().sent == 4
    assert reads == [mail.pk]

    by_rcpt = {r.rcpt_tos[0]: r.message for r in smtp_server.received}
    for name in ("ann", "bob", "cy"):
        files = {p.get_filename(): p.get_content() for p in by_rcpt[f"{name}@example.org"].iter_attachments()}
        assert files == {"plan.pdf": b"%PDF-1.4 plan", "notes.txt": "notes"}
    assert list(by_rcpt[adhoc.to_address].iter_attachments()) == []


def test_copy_gives_the_new_request_its_own_files():
    source = MessageRequestFactory()
    RequestAttachment.objects.create(request=source, file=ContentFile(b"abc", name="a.txt"), filename="a.txt", size=3)
    target = MessageRequestFactory()
    attachments.copy(source, target)
    [copied] = attachments.read(target.pk)
    assert copied == ("a.txt", b"abc", "application/octet-stream")
    source.attachments.get().file.delete()
    assert attachments.read(target.pk) == [copied]
