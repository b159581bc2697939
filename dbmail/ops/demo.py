"""Demo data for `make run`: groups, people, a sender account with a DKIM key, and one request to send."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from dbmail import audit
from dbmail.conf import settings as conf
from dbmail.models import MessageRequest, SenderAccount
from dbmail.ops import dkimkeys

PEOPLE = [
    ("ann", "Ann", "Smith", "Teachers"),
    ("bob", "Bob", "Jones", "Teachers"),
    ("carla", "Carla", "Diaz", "Students"),
    ("dev", "Dev", "Patel", "Students"),
    ("emma", "Emma", "Brown", "Students"),
    ("farid", "Farid", "Khan", "Students"),
    ("grace", "Grace", "Lee", "Students"),
]


def load(admin_password="admin"):
    """Create the demo data if absent; return what was created, as lines to print."""
    User = get_user_model()
    done = []
    admin = User.objects.filter(username="admin").first()
    if admin is None:
        admin = User.objects.create_superuser("admin", "admin@example.org", admin_password, first_name="Ada")
        done.append(f"superuser admin / {admin_password}")
    for username, first, last, group_name in PEOPLE:
        group, _ = Group.objects.get_or_create(name=group_name)
        user, created = User.objects.get_or_create(
            username=username,
            defaults={"first_name": first, "last_name": last, "email": f"{username}@example.org"},
        )
        user.groups.add(group)
        if created:
            done.append(f"user {username} in {group_name}")
    sender, created = SenderAccount.objects.get_or_create(
        address="office@example.org", defaults={"display_name": conf.DBMAIL_SITE_NAME + " office"}
    )
    if created:
        done.append(f"sender account {sender.address}")
    # The demo's mail is signed like a deployment's (and dbmail_status has no unsigned mail to warn of):
    # a key made the way `dbmail_dkim generate` makes one. Nothing publishes its record, so a receiver
    # outside could not verify it; the captured mail shows the signature a real domain would carry.
    domain = dkimkeys.clean_domain(sender.address.rpartition("@")[2])
    if not dkimkeys.active_keys(domain):
        key = dkimkeys.generate(domain)
        audit.record(None, "generate DKIM key", key, detail="manage.py dbmail_demo")
        done.append(f"DKIM key {key.selector} for {key.domain} (dbmail_dkim dns {key.domain} prints its record)")
    if not MessageRequest.objects.exists():
        # The public web version is rendered with no recipient: a default keeps it from reading "Hello ,".
        MessageRequest.objects.create(
            sender=sender,
            subject='Welcome, {{ first_name|default:"friend" }}!',
            text_body=(
                'Hello {{ first_name|default:"friend" }},\n\nthis is the first mail sent by {{ site_name }}.\n'
                "Your user name is {{ username }}.\n\nView it in your browser: {{ web_version_url }}\n"
                "Unsubscribe: {{ unsubscribe_url }}\n"
            ),
            html_body=(
                '<p>Hello <b>{{ first_name|default:"friend" }}</b>,</p><p>this is the first mail sent by {{ site_name }}.</p>'
                # The web version itself has no web_version_url: no link there that leads nowhere.
                '{% if web_version_url %}<p><a href="{{ web_version_url }}">View it in your browser</a></p>{% endif %}'
            ),
            public=True,  # the captured mail links its public web version, as README says
            recipient_set="groups",
            recipient_params={"groups": ["Students"]},
            creator=admin,  # the request page and its history then say who made it, as for any other
        )
        done.append("a request to the Students group, due now")
    return done
