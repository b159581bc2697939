import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from dbmail.content import rendering
from dbmail.models import MessageRequest, SenderAccount, TextOfEmail


class GroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Group
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"group{n}")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    is_active = True

    @factory.post_generation
    def groups(self, create, extracted, **kwargs):
        if create and extracted:
            self.groups.add(*extracted)


class SenderAccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SenderAccount
        django_get_or_create = ("address",)

    address = "office@example.org"
    display_name = "The Office"


class MessageRequestFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MessageRequest

    sender = factory.SubFactory(SenderAccountFactory)
    subject = "Hello {{ first_name }}"
    text_body = "Dear {{ name }},\nyour address is {{ email }}.\n"
    recipient_set = "all_active"
    send_at = factory.LazyFunction(timezone.now)


class TextOfEmailFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TextOfEmail

    account = factory.SubFactory(SenderAccountFactory)
    to_address = factory.Sequence(lambda n: f"rcpt{n}@example.net")
    from_header = "The Office <office@example.org>"
    envelope_sender = "office@example.org"
    subject = factory.Sequence(lambda n: f"Message {n}")
    text = "Hello.\n"
    message_id = factory.LazyFunction(rendering.new_message_id)


def queue_emails(n, start=0, account=None, domain=None, **fields):
    """n queued emails of one sender account (a new one by default), "hello" to r<start..>@example.net.

    `domain`: to r<start..>@domain instead, with the destination group a new email of it has.
    Returns their Message-IDs, the set a test compares with what its SMTP server received.
    """
    from dbmail.send import destinations

    account = account or SenderAccountFactory(address=f"s{start}@example.org")
    if domain is not None:
        fields["dest_group"] = destinations.group_of(f"x@{domain}")
    emails = TextOfEmail.objects.bulk_create(
        TextOfEmail(
            account=account,
            to_address=f"r{i:05d}@{domain or 'example.net'}",
            from_header=account.from_header,
            envelope_sender=account.address,
            subject=f"n{i}",
            text="hello\n",
            message_id=rendering.new_message_id(),
            **fields,
        )
        for i in range(start, start + n)
    )
    return {email.message_id for email in emails}


# --- mailgate ---------------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

from mailgate.models import EmailList  # noqa: E402

MAIL_DIR = Path(__file__).resolve().parent / "mail"


def mail_fixture(name):
    """The bytes of a message fixture under tests/mail/."""
    return (MAIL_DIR / name).read_bytes()


class EmailListFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EmailList
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"List {n}")
    regex = factory.Sequence(lambda n: f"list{n}")
    posting_policy = EmailList.Policy.ANYONE

    @factory.post_generation
    def users(self, create, extracted, **kwargs):
        if create and extracted:
            self.users.add(*extracted)

    @factory.post_generation
    def groups(self, create, extracted, **kwargs):
        if create and extracted:
            self.groups.add(*extracted)


# --- Mailboxes ---


class MailServerProfileFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "mailgate.MailServerProfile"

    name = factory.Sequence(lambda n: f"profile{n}")
    imap_host = "127.0.0.1"
    imap_port = 143
    imap_ssl = False
    smtp_host = ""
    smtp_starttls = False


class MailAccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "mailgate.MailAccount"

    profile = factory.SubFactory(MailServerProfileFactory)
    address = factory.Sequence(lambda n: f"box{n}@example.org")
    login = factory.Sequence(lambda n: f"box{n}")
    secret = "not-the-password"


class MailFolderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "mailgate.MailFolder"

    account = factory.SubFactory(MailAccountFactory)
    name = "INBOX"
    enabled = True
