"""Every URL of the project, asked by everyone who should be refused, refuses them and changes nothing.

The walk goes through the root URLconf's resolver, so a URL added anywhere is asked too; a URL
this file does not classify fails the walk (add it to PUBLIC with the reason, or to the class
of pages whose rule it follows). Each is asked with GET and with POST by four people: nobody
signed in, a signed-in user who is not staff, staff holding no permission, and staff holding
every *view* permission. A page that is theirs may answer; every other page answers a redirect
to the sign-in page, 401, 403, 404 or 405, never 200 and never a 500. After every POST, every
table of the project holds what it held before.

The panel's DBMAIL_PANEL_ALL_STAFF is off here: with it on (the default, docs/admins.md) every
staff member is a composer by design, so "staff with no permission" has the panel's right.
"""

import re
from dataclasses import dataclass

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import Resolver404, URLPattern, URLResolver, get_resolver, resolve
from django.urls.resolvers import RegexPattern

from dbmail.models import EmailTemplate, MessageRequest, Suppression, TextOfEmail
from mailgate.models import Message

from .factories import (
    MailAccountFactory,
    MailFolderFactory,
    MessageRequestFactory,
    TextOfEmailFactory,
    UserFactory,
)

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # about 4,000 requests: a minute

# Open to anyone, each for its reason; asked here all the same (no 500, no change from junk values).
PUBLIC = {
    "home": "redirects to the comm panel, which asks for sign-in",
    "favicon.ico": "the site's icon (a redirect to a static file)",
    "admin:login": "the sign-in page",
    "dbmail:unsubscribe": "the link in every email; its signed token names the address",
    "dbmail:web_version": "a request published as a web page, at an unguessable address",
    "dbmail:tracking-events": "the MTA's callback; it proves itself with a shared secret (dbmail.track.webhooks)",
    "dbmail:tracking-events-mapped": "the same callback, with a field mapping",
    "api-token": "exchanges a username and password for a token (rate-limited)",
}

# Any staff member's own session: they show or change nothing but the person's own account.
OWN_SESSION = {
    "admin:index": "lists only the models the user may see (checked below)",
    "admin:logout": "ends one's own session",
    "admin:password_change": "changes one's own password",
    "admin:password_change_done": "says so",
    "admin:jsi18n": "the admin's translations",
    "commpanel:logout": "ends one's own session",
}

# Pages about what one owns, open to every signed-in user (docs/mailboxes.md, "Permissions"):
# they must show nothing of another's, which the walk asks by naming another user's objects.
OWN_DATA = re.compile(r"^(mailbox-|seed-|send-grant-|api-root$|api-schema$)")

REFUSED = {302, 401, 403, 404, 405}


@dataclass
class Role:
    name: str
    client: Client
    user: object = None


def _viewer():
    user = UserFactory(username="viewer", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    return user


@pytest.fixture
def roles(settings):
    settings.DBMAIL_PANEL_ALL_STAFF = False
    made = [
        Role("anonymous", Client()),
        Role("user", Client(), UserFactory(username="plain")),
        Role("staff", Client(), UserFactory(username="bare-staff", is_staff=True)),
        Role("viewer", Client(), _viewer()),
    ]
    for role in made:
        role.client.raise_request_exception = False  # a 500 is one finding among the others
        if role.user is not None:
            role.client.force_login(role.user)
    return made


@pytest.fixture
def objects():
    """One existing object for every id a URL takes, owned by someone who is none of the roles."""
    owner = UserFactory(username="owner", is_staff=False)
    mail = MessageRequestFactory(status=MessageRequest.Status.DRAFT, creator=owner)
    sent = MessageRequestFactory(status=MessageRequest.Status.EXPANDED, creator=owner, subject="sent one")
    email = TextOfEmailFactory(request=sent, account=sent.sender, status=TextOfEmail.Status.DROPPED)
    folder = MailFolderFactory(account=MailAccountFactory(owner=owner))
    message = Message.objects.create(
        direction="out", status="error", account=folder.account, to=["x@example.org"], subject="owner's secret"
    )
    return {
        "owner": owner,
        "mail": mail,
        "sent": sent,
        "email": email,
        "template": EmailTemplate.objects.create(name="t", subject="s", text_body="b"),
        "suppression": Suppression.objects.create(address="gone@example.net", reason=Suppression.Reason.BOUNCED),
        "folder": folder,
        "account": folder.account,
        "profile": folder.account.profile,
        "message": message,
    }


def walk(resolver=None, prefix="", namespace=""):
    """(route as written, URL name or route, pattern) for every pattern of the root URLconf."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from walk(entry, prefix + _route(entry.pattern), inner)
        elif isinstance(entry, URLPattern):
            route = prefix + _route(entry.pattern)
            yield route, (f"{namespace}{entry.name}" if entry.name else route), entry


def _route(pattern):
    text = str(pattern)
    if isinstance(pattern, RegexPattern):
        text = text.removeprefix("^").removesuffix("$").replace("/?", "/").replace(r"\.", ".")
    return text


def _value(name, arg, objects):
    """A plausible value for URL argument `arg` of URL `name`: an existing object's id where one is meant."""
    fixed = {
        "format": "json",
        "position": "0",
        "app_label": "dbmail",
        "url": "no/such/page/",
        "token": "not-a-token",
        "public_id": "00000000-0000-4000-8000-000000000000",
        "mapping": "no-such-mapping",
        "email_pk": objects["email"].pk,
        "id": objects["owner"].pk,  # the admin's set-password page of a user
        "content_type_id": ContentType.objects.get_for_model(MessageRequest).pk,
    }
    if arg in fixed:
        return str(fixed[arg])
    if arg == "object_id":
        model = _admin_model(name)
        row = model.objects.order_by("pk").first() if model else None
        return str(row.pk if row else 999999)
    owners = [
        ("commpanel:template", "template"),
        ("commpanel:suppression", "suppression"),
        ("commpanel:email", "sent"),
        ("commpanel:", "mail"),
        ("api-request", "sent"),
        ("api-send", "email"),
        ("mailbox-profile", "profile"),
        ("seed-profile", "profile"),
        ("mailbox-account", "account"),
        ("seed-account", "account"),
        ("mailbox-folder", "folder"),
        ("seed-folder", "folder"),
        ("mailbox-message", "message"),
        ("seed-message", "message"),
    ]
    for start, key in owners:
        if name.startswith(start):
            return str(objects[key].pk)
    if name.startswith("admin:") and arg == "pk":  # an admin's raw-download view
        model = _admin_model(name)
        row = model.objects.order_by("pk").first() if model else None
        return str(row.pk if row else 999999)
    raise AssertionError(f"{name}: no value for <{arg}>: add one to _value")


ADMIN_MODEL_URL = re.compile(r"^admin:(?P<app>[a-z]+)_(?P<model>[a-z]+)_(?P<page>[a-z_]+)$")
ADMIN_OBJECT_ROUTE = re.compile(r"^admin/(?P<app>[a-z]+)/(?P<model>[a-z]+)/")


def _admin_model(name):
    for pattern in (ADMIN_MODEL_URL, ADMIN_OBJECT_ROUTE):
        found = pattern.match(name)
        if found:
            try:
                return apps.get_model(found["app"], found["model"])
            except LookupError:
                return None
    return None


def _fill(route, name, objects):
    def one(match):
        return _value(name, match["arg"], objects)

    url = re.sub(r"\(\?P<(?P<arg>\w+)>[^)]*\)", one, route)
    url = url.replace("<drf_format_suffix:format>", ".json")
    url = re.sub(r"<(?:\w+:)?(?P<arg>\w+)>", one, url)
    return "/" + url


# The admin's own pages for each registered model, and what a holder of only `view` may do there.
ADMIN_VIEW_PAGES = {"changelist", "change", "history", "raw"}
ADMIN_CUSTOM = {
    "admin:dbmail_dns_check": "dbmail.view_dkimkey",
    "admin:mailgate_test_address": "mailgate.view_emaillist",
}


def kind_of(name, route):
    """The rule a URL follows: public, own_session, own_data, panel, sending_api or admin."""
    if name in PUBLIC:
        return "public"
    if name in OWN_SESSION:
        return "own_session"
    if OWN_DATA.match(name):
        return "own_data"
    if name.startswith("commpanel:"):
        return "panel"
    if name.startswith(("api-request-", "api-send-")):
        return "sending_api"
    if name in ADMIN_CUSTOM or name in ("admin:autocomplete", "admin:view_on_site", "admin:app_list"):
        return "admin"
    if route == "admin/(?P<url>.*)":
        return "admin"  # the catch-all: a 404, or the slash-appending redirect
    found = ADMIN_MODEL_URL.match(name) or ADMIN_OBJECT_ROUTE.match(route)
    if found and _admin_model(name) in admin.site._registry:
        return "admin"
    return None


def may_answer(role, kind, name, method):
    """May `role` get a 2xx from this URL (it is theirs), or must it refuse?"""
    if kind == "public":
        return True
    if role.user is None:
        return False
    if kind == "own_data":
        return True  # what it shows is checked against the owner's objects instead
    if not role.user.is_staff:
        return False
    if kind == "own_session":
        return True
    # A POST to a page one may view only shows it again: the snapshot says it changed nothing.
    if kind == "admin" and role.name == "viewer":
        found = ADMIN_MODEL_URL.match(name)
        return bool(found and found["page"] in ADMIN_VIEW_PAGES) or name in ADMIN_CUSTOM or name == "admin:app_list"
    return False


def snapshot():
    """Every row of every table of the project's apps and of auth, as values (sessions are left out)."""
    tables = {}
    for model in apps.get_models():
        if model._meta.app_label in ("dbmail", "mailgate", "auth", "authtoken") and not model._meta.proxy:
            rows = model._base_manager.order_by("pk").values()
            # A sign-in stamps last_login; the roles signed in before the first snapshot.
            tables[model._meta.label] = [{k: v for k, v in row.items() if k != "last_login"} for row in rows]
    return tables


def _changes(before, after):
    return sorted(label for label in before if before[label] != after[label])


def _requests(url, name, objects):
    """The POSTs to try: an empty one, and for an admin change list each of its actions on every row."""
    posts = [{}]
    found = ADMIN_MODEL_URL.match(name)
    if found and found["page"] == "changelist":
        model_admin = admin.site._registry[_admin_model(name)]
        ids = [str(pk) for pk in model_admin.model._base_manager.values_list("pk", flat=True)]
        actions = {"delete_selected", *[a if isinstance(a, str) else a.__name__ for a in model_admin.actions or []]}
        posts += [{"action": a, "_selected_action": ids, "index": "0", "post": "yes"} for a in sorted(actions)]
    if name in ("admin:dbmail_messagerequest_delete", "admin:dbmail_suppression_delete"):
        posts.append({"post": "yes"})
    return posts


def _leaks(response, objects):
    body = response.content.decode("utf-8", "replace")
    return objects["message"].subject in body or objects["account"].address in body


def test_every_url_is_classified():
    unknown = [f"{name} ({route})" for route, name, _ in walk() if kind_of(name, route) is None]
    assert not unknown, "URLs no rule covers (see this file's PUBLIC and kind_of): " + ", ".join(unknown)


def test_every_url_refuses_who_may_not_use_it(roles, objects):
    problems = []
    for role in roles:
        for route, name, _ in walk():
            kind = kind_of(name, route)
            url = _fill(route, name, objects)
            try:
                resolve(url)  # the value filled in is one the pattern takes
            except Resolver404:
                problems.append(f"{name}: {url} does not resolve: fix _value")
                continue
            for method, data in [("GET", None)] + [("POST", d) for d in _requests(url, name, objects)]:
                before = snapshot() if method == "POST" else None
                if method == "GET":
                    response = role.client.get(url)
                else:
                    response = role.client.post(url, data)
                where = f"{role.name} {method} {url} ({name})"
                if response.status_code >= 500:
                    problems.append(f"{where}: {response.status_code}")
                if not may_answer(role, kind, name, method) and response.status_code not in REFUSED:
                    problems.append(f"{where}: {response.status_code}, not refused")
                signed_out = role.user is None or (kind == "admin" and not role.user.is_staff)
                if response.status_code == 302 and kind in ("panel", "admin") and signed_out:
                    if "/admin/login/" not in response["Location"]:
                        problems.append(f"{where}: redirected to {response['Location']}, not to sign-in")
                if kind == "own_data" and response.status_code == 200 and _leaks(response, objects):
                    if role.user is None or not _can_see_everyones(role.user):
                        problems.append(f"{where}: shows another user's mailbox")
                if method == "POST":
                    changed = _changes(before, snapshot())
                    if changed and kind != "public":
                        problems.append(f"{where}: changed {', '.join(changed)}")
                    elif changed:
                        problems.append(f"{where} (public, junk values): changed {', '.join(changed)}")
            if role.user is not None:
                role.client.force_login(role.user)  # a logout page signed them out
    assert not problems, "\n".join(problems)


def _can_see_everyones(user):
    """Who may read every user's mailboxes through the API: holders of the admin's view permission on them."""
    return user.has_perm("mailgate.view_message") and user.has_perm("mailgate.view_mailaccount")


def test_admin_index_shows_bare_staff_nothing(roles, objects):
    staff = next(r for r in roles if r.name == "staff")
    response = staff.client.get("/admin/")
    assert response.status_code == 200
    assert response.context["app_list"] == []
