"""Only logged-in users with dbmail.add_messagerequest reach the comm panel; forged POSTs do nothing."""

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse

from dbmail.models import MessageRequest, Suppression

from .factories import MessageRequestFactory, UserFactory

pytestmark = pytest.mark.django_db


def panel_urls(mail):
    pk = mail.pk
    gets = [
        reverse("commpanel:requests"),
        reverse("commpanel:dashboard"),
        reverse("commpanel:compose"),
        reverse("commpanel:request", args=[pk]),
        reverse("commpanel:edit", args=[pk]),
        reverse("commpanel:status", args=[pk]),
        reverse("commpanel:templates"),
        reverse("commpanel:template_new"),
        reverse("commpanel:suppressions"),
    ]
    posts = [
        reverse("commpanel:count"),
        reverse("commpanel:send", args=[pk]),
        reverse("commpanel:test", args=[pk]),
        reverse("commpanel:cancel", args=[pk]),
        reverse("commpanel:retry", args=[pk]),
        reverse("commpanel:reuse", args=[pk]),
        reverse("commpanel:suppressions"),
    ]
    return gets, posts


def test_anonymous_visitor_is_sent_to_login_and_changes_nothing():
    mail = MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    client = Client()
    gets, posts = panel_urls(mail)
    for url in gets + posts:
        response = client.post(url, {"address": "x@example.org"}) if url in posts else client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), url
    mail.refresh_from_db()
    assert mail.status == MessageRequest.Status.DRAFT
    assert MessageRequest.objects.count() == 1
    assert not Suppression.objects.exists()


@pytest.mark.parametrize("is_staff, all_staff", [(False, True), (True, False)])
def test_user_without_the_permission_gets_403(is_staff, all_staff, settings):
    settings.DBMAIL_PANEL_ALL_STAFF = all_staff
    mail = MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    user = UserFactory(username="plain", is_staff=is_staff)
    client = Client()
    client.force_login(user)
    gets, posts = panel_urls(mail)
    for url in gets:
        assert client.get(url).status_code == 403, url
    for url in posts:
        assert client.post(url, {"address": "x@example.org", "when": "now"}).status_code == 403, url
    mail.refresh_from_db()
    assert mail.status == MessageRequest.Status.DRAFT
    assert MessageRequest.objects.count() == 1
    assert not Suppression.objects.exists()


def test_staff_may_use_the_panel_by_default_and_inactive_users_never(settings):
    mail = MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    staff = UserFactory(username="staffer", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(reverse("commpanel:request", args=[mail.pk])).status_code == 200
    staff.is_active = False
    staff.save()
    assert client.get(reverse("commpanel:request", args=[mail.pk])).status_code == 302  # logged out: to login


def test_permitted_user_sees_every_page(panel):
    mail = MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    gets, _ = panel_urls(mail)
    for url in gets:
        assert panel.get(url).status_code == 200, url


def test_every_page_leads_staff_to_the_admin_and_others_not(panel, editor):
    mail = MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    gets, _ = panel_urls(mail)
    link = f'href="{reverse("admin:index")}" id="to-admin"'
    for url in gets:
        if not url.endswith(".json"):
            assert link in panel.get(url).content.decode(), url
    editor.is_staff = False  # the panel may be open to non-staff; the admin never is
    editor.save()
    assert link not in panel.get(reverse("commpanel:requests")).content.decode()


def test_forged_post_without_csrf_token_is_refused(editor):
    mail = MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    client = Client(enforce_csrf_checks=True)
    client.force_login(editor)
    _, posts = panel_urls(mail)
    for url in posts:
        assert client.post(url, {"address": "x@example.org", "when": "now"}).status_code == 403, url
    mail.refresh_from_db()
    assert mail.status == MessageRequest.Status.DRAFT
    assert MessageRequest.objects.count() == 1
    assert not Suppression.objects.exists()


def test_every_panel_form_carries_a_csrf_token(panel):
    mail = MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    for url in [
        reverse("commpanel:compose"),
        reverse("commpanel:request", args=[mail.pk]),
        reverse("commpanel:suppressions"),
    ]:
        html = panel.get(url).content.decode()
        assert html.count('method="post"') == html.count("csrfmiddlewaretoken"), url


def test_the_403_page_says_why_and_offers_a_way_out(settings):
    user = UserFactory(username="plain", is_staff=False)
    client = Client()
    client.force_login(user)
    response = client.get(reverse("commpanel:requests"), HTTP_REFERER="http://testserver/somewhere/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "This account may not use the comm panel" in html and "signed in as <b>plain</b>" in html
    assert "“Can add message request”, or to make it a staff account" in html
    assert 'href="http://testserver/somewhere/" id="go-back"' in html
    assert f'action="{reverse("commpanel:logout")}"' in html and "Sign in as someone else" in html
    foreign = client.get(reverse("commpanel:requests"), HTTP_REFERER="https://evil.example/")
    assert "evil.example" not in foreign.content.decode() and 'href="/" id="go-back"' in foreign.content.decode()
    # The way out works: logged out, then to the sign-in page that leads back here.
    out = client.post(reverse("commpanel:logout"), {"next": reverse("admin:login") + "?next=/commpanel/"})
    assert out.status_code == 302 and out["Location"] == reverse("admin:login") + "?next=/commpanel/"
    assert client.get(reverse("commpanel:requests")).status_code == 302


def test_the_sign_in_page_names_the_site_not_django(client, settings):
    html = client.get(reverse("admin:login") + "?next=/commpanel/").content.decode()
    assert "Django administration" not in html
    assert "Staff sign-in for the comm panel" in html and settings.DBMAIL_SITE_NAME in html


def test_the_site_root_leads_to_the_comm_panel(client):
    # README names http://127.0.0.1:8000/ and the admin's "View site" links to /: neither may be a 404.
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == reverse("commpanel:requests")
    response = client.get("/", follow=True)
    assert response.redirect_chain[-1][0].startswith(reverse("admin:login"))
    assert response.status_code == 200


def test_favicon_is_served_not_a_404(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("dbmail/favicon.svg")
    assert finders.find("dbmail/favicon.svg"), "the icon the redirect names must exist"
    html = client.get("/unsubscribe/not-a-token/").content.decode()  # a page of base.html
    assert 'rel="icon" href="/static/dbmail/favicon.svg"' in html
