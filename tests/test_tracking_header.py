"""The tracking header (dbmail.track.header): signed ids, carried by every email, and all the send path needs."""

import ast

import pytest

from dbmail.models import TextOfEmail
from dbmail.send import loop as sending
from dbmail.track.apply import apply_batch
from dbmail.track.header import TRACKING_HEADER, email_pk_from_tracking_id, tracking_id

from .conftest import ROOT
from .factories import TextOfEmailFactory
from .tracking_support import event

Status = TextOfEmail.Status


@pytest.mark.parametrize("secret", ["a-secret", "ünïcode secret", b"bytes secret"])
def test_tracking_ids_are_what_djangos_signer_makes_and_follow_the_secret_key(settings, secret):
    from django.core import signing

    from dbmail.track.header import _SALT

    settings.SECRET_KEY = secret
    for pk in (1, 42, 10**15):
        assert tracking_id(pk) == signing.Signer(key=secret, salt=_SALT).sign(str(pk))
    assert email_pk_from_tracking_id(tracking_id(7)) == 7
    settings.SECRET_KEY = "another secret"
    assert tracking_id(7) != signing.Signer(key=secret, salt=_SALT).sign("7")


def test_tracking_ids_are_signed():
    value = tracking_id(42)
    assert email_pk_from_tracking_id(value) == 42
    assert email_pk_from_tracking_id(value.replace("42:", "43:")) is None
    assert email_pk_from_tracking_id("garbage") is None
    assert email_pk_from_tracking_id(None) is None


def test_the_send_path_imports_only_the_header_of_tracking():
    """Building and sending a message must not load the applier (or anything else of tracking)."""
    imported = {}
    for path in sorted((ROOT / "dbmail" / "send").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "dbmail.track":
                modules = [f"dbmail.track.{alias.name}" for alias in node.names]  # from dbmail.track import x
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                if module.startswith("dbmail.track"):
                    imported.setdefault(module, set()).add(path.name)
    assert imported == {"dbmail.track.header": {"message.py", "mime.py"}}


@pytest.mark.django_db
def test_every_outbound_email_carries_its_signed_tracking_header(smtp_server):
    email = TextOfEmailFactory()
    assert sending.send_due().sent == 1
    [received] = smtp_server.received
    header = received.message[TRACKING_HEADER]
    assert email_pk_from_tracking_id(header) == email.pk
    # An MTA that reports our header instead of the Message-ID reaches the same email.
    apply_batch([event("", "delivered", tracking_id=header)])
    email.refresh_from_db()
    assert email.status == Status.DELIVERED
