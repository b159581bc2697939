"""End to end in a real headless Chromium: compose to a group, preview, send, cron, watch it finish.

Needs Debian's chromium at /usr/bin/chromium (.ci/run installs it) and Playwright's Python
package; Playwright's own browser download is never used. The screenshot of the finished
request page is saved as test-output/commpanel-request.png, with one screenshot per page tested.
"""

import contextlib
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connections
from django.utils import timezone
from playwright import sync_api as playwright_api

from dbmail.models import MessageRequest

from .conftest import ROOT, subprocess_env
from .factories import MessageRequestFactory, SenderAccountFactory, TextOfEmailFactory, UserFactory
from .panel import panel_user

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "test-output" / "commpanel-request.png"

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@contextlib.contextmanager
def playwright_session():
    """Playwright's sync API, leaving no database session behind. Its event loop runs in this thread,
    and the ORM keeps a connection of its own for code run while it does (asgiref's context-local
    connections); left open, it outlived the test and the test database could not be dropped."""
    with playwright_api.sync_playwright() as p:
        try:
            yield p
        finally:
            connections.close_all()


def test_staff_composes_previews_sends_and_follows_a_request(live_server, smtp_server, settings, monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the ORM calls here are still synchronous.
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does it)")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    settings.DBMAIL_PANEL_POLL_SECONDS = 1
    panel_user("chief")
    SenderAccountFactory()
    students = Group.objects.create(name="Students")
    names = {"ada": "Ada", "bea": "Bea", "cal": "Cal"}
    for username, first in names.items():
        UserFactory(username=username, first_name=first, groups=[students])
    UserFactory(username="outsider", first_name="Olga")  # not in the group: must not get it

    with playwright_session() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15000)
        page.on("dialog", lambda dialog: dialog.accept())

        # Log in as staff and open the compose page.
        page.goto(f"{live_server.url}/commpanel/compose/")
        page.fill("#id_username", "chief")
        page.fill("#id_password", "pw-for-tests")
        page.click("input[type=submit]")
        page.wait_for_url("**/commpanel/compose/")

        # Compose to the group with a variable, inserted from the variables list.
        page.fill("#id_subject", "News for ")
        page.click("#id_subject")
        page.press("#id_subject", "End")
        page.click("button.var[data-insert='{{ first_name }}']")
        page.fill("#id_text_body", "Dear {{ first_name }},\nthe timetable changes on Monday.\n")
        page.select_option("#id_recipient_set", "groups")
        page.check(f"input[name=groups][value='{students.pk}']")
        page.wait_for_function("document.getElementById('audience-count').textContent === '3'")
        page.click("button:has-text('Save and preview')")
        page.wait_for_url("**/commpanel/requests/*/")
        assert page.inner_text("#draft-count") == "3"
        assert page.inner_text("#preview-subject") == "News for Ada"

        # Step to the second recipient.
        page.click("#preview-next")
        page.wait_for_url("**?i=1*")
        assert page.inner_text("#preview-to") == "bea@example.org"
        assert page.inner_text("#preview-subject") == "News for Bea"
        assert "Dear Bea," in page.inner_text("#preview-text")

        # Send now; a real dbmail_cron sends in the background, paced so the page can be watched.
        page.evaluate("window.notReloaded = true")
        page.click("#send-form button[type=submit]")
        page.wait_for_selector("#progress")
        assert "Queued. This goes out to 3 addresses on the next sending run." in page.inner_text(".messages")
        assert "No emails yet" in page.inner_text("#emails")
        page.evaluate("window.notReloaded = true")
        env = subprocess_env(smtp_server, DBMAIL_THROTTLE_PER_SECOND="1.5")
        cron = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "dbmail_cron"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            # While it sends: the state, the line, the bar and the emails table follow without a reload.
            page.wait_for_function("document.getElementById('request-status').textContent === 'Sending'")
            page.wait_for_function("document.querySelectorAll('#emails tbody tr a').length === 3")
            page.wait_for_function(
                "/^Sending: [12] of 3 handled/.test(document.getElementById('status-line').textContent)"
            )
            assert "Cancel the rest" in page.inner_text("#actions")
            assert page.locator(".messages .message").count() == 0  # the "Queued" flash is past
            page.wait_for_function("document.getElementById('request-status').textContent === 'Done'")
        finally:
            cron.communicate(timeout=60)
        assert cron.returncode == 0
        assert page.evaluate("window.notReloaded") is True
        assert page.inner_text("#status-line") == "Done: 3 sent."
        assert page.inner_text("#status-chart [data-status=sent]") == "3"
        assert page.get_attribute("#progress [data-segment=sent]", "style").replace(" ", "") == "width:100%;"
        assert "Cancel the rest" not in page.inner_text("#actions")
        rows = page.locator("#emails tbody tr")
        assert rows.count() == 3
        assert all("sent" in rows.nth(i).inner_text() for i in range(3))
        assert page.inner_text("#delivery [data-measure=sent]") == "3"
        page.wait_for_timeout(500)  # the bar's short transition
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        browser.close()

    mail = MessageRequest.objects.get()
    assert mail.status_counts() == {"sent": 3}
    received = {r.rcpt_tos[0]: r.message for r in smtp_server.received}
    assert set(received) == {f"{u}@example.org" for u in names}
    for username, first in names.items():
        assert received[f"{username}@example.org"]["Subject"] == f"News for {first}"
    assert SCREENSHOT.stat().st_size > 10_000


# --- One page each: a logged-in Chromium page on the live server ---


@pytest.fixture
def browser_page(live_server, monkeypatch):
    """(page, live_server) logged in as a panel user, at desktop width."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does it)")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    panel_user("chief")
    with playwright_session() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15000)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{live_server.url}/admin/login/?next=/commpanel/")
        page.fill("#id_username", "chief")
        page.fill("#id_password", "pw-for-tests")
        page.click("input[type=submit]")
        page.wait_for_url("**/commpanel/")
        yield page, live_server
        browser.close()


def screenshot(page, name):
    path = ROOT / "test-output" / name
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_dashboard_draws_its_charts_and_fits_a_phone(browser_page):
    from dbmail import rollup

    page, server = browser_page
    today = timezone.localdate()
    office = SenderAccountFactory()
    news = SenderAccountFactory(address="news@example.org")
    for n in range(30):
        day = today - timedelta(days=n)
        rollup.count(
            [(day, office.pk, None, "sent")] * (20 + n % 7) + [(day, office.pk, None, "delivered")] * (18 + n % 5)
        )
        rollup.count([(day, news.pk, None, "sent")] * 5 + [(day, news.pk, None, "bounced")] * (n % 3))
    page.click("nav >> text=Dashboard")
    page.wait_for_url("**/commpanel/dashboard/")
    page.wait_for_selector("#chart-days[data-rendered='1']")
    page.wait_for_selector("#chart-accounts[data-rendered='1']")
    drawn = page.evaluate(
        "() => { const c = Chart.getChart('chart-days'); return [c.data.labels.length, c.data.datasets.length]; }"
    )
    assert drawn == [30, 8]  # sent, delivered, deferred, bounced, hard bounced, complained, dropped, unsubscribed
    # Each figure's tile has the colour of its line in the chart (sent was green above, blue below).
    colours = page.evaluate(
        """() => {
            const rgb = (c) => { const e = document.createElement("i"); e.style.color = c; document.body.append(e);
                                 const v = getComputedStyle(e).color; e.remove(); return v; };
            return Chart.getChart('chart-days').data.datasets.map((d) => [
                rgb(d.borderColor),
                getComputedStyle(document.querySelector(`.tile[data-measure=${d.label.toLowerCase().replace(/ /g, '_')}]`), '::before')
                    .backgroundColor,
            ]);
        }"""
    )
    assert len(colours) == 8 and all(line == tile for line, tile in colours), colours
    assert page.evaluate("() => Chart.getChart('chart-accounts').data.labels") == [
        "office@example.org",
        "news@example.org",
    ]
    page.wait_for_timeout(500)  # the charts' short animation
    screenshot(page, "commpanel-dashboard.png")

    # Another range through the date inputs.
    page.fill("#range-from", (today - timedelta(days=6)).isoformat())
    page.click("#range-form button[type=submit]")
    page.wait_for_selector("#chart-days[data-rendered='1']")
    assert page.evaluate("() => Chart.getChart('chart-days').data.labels.length") == 7

    # At phone width nothing spills sideways out of the page; wide tables scroll in their own box.
    page.set_viewport_size({"width": 375, "height": 800})
    mail = MessageRequestFactory(
        sender=office, status=MessageRequest.Status.EXPANDED, subject="A rather long subject " * 4
    )
    email = TextOfEmailFactory(request=mail, account=office, status="dropped", last_error="550 5.1.1 " + "x" * 300)
    pages = ["/commpanel/dashboard/", "/commpanel/", "/commpanel/suppressions/", "/commpanel/templates/"]
    pages += [
        f"/commpanel/requests/{mail.pk}/",
        f"/commpanel/requests/{mail.pk}/emails/{email.pk}/",
        "/commpanel/compose/",
    ]
    for path in pages:
        page.goto(server.url + path)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 375, path
    page.goto(server.url + "/commpanel/dashboard/")
    page.wait_for_selector("#chart-days[data-rendered='1']")
    page.wait_for_timeout(500)
    screenshot(page, "commpanel-dashboard-phone.png")


def test_a_scheduled_request_is_rescheduled_and_cancelled_with_words_that_say_when(browser_page):
    page, server = browser_page
    mail = MessageRequestFactory(
        subject="Term dates",
        recipient_set="addresses",
        recipient_params={"rows": [{"email": "ann@example.org"}, {"email": "bob@example.org"}]},
        status=MessageRequest.Status.QUEUED,
        send_at=timezone.now() + timedelta(days=3),
    )
    dialogs = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    page.goto(f"{server.url}/commpanel/requests/{mail.pk}/")
    assert page.inner_text("#request-status") == "Scheduled"
    assert "This will be sent to 2 addresses on" in page.inner_text("#plan")
    page.check("#reschedule-form input[name=when][value=later]")
    page.fill("#reschedule-form input[name=send_at]", "2099-12-03T09:00")
    page.click("#reschedule-form button[type=submit]")
    page.wait_for_url(f"**/commpanel/requests/{mail.pk}/")
    assert dialogs[-1] == "Move this to 3 Dec 2099 at 09:00? It will be sent to 2 addresses then."
    assert "Rescheduled. This will be sent to 2 addresses on 3 Dec 2099 at 09:00." in page.inner_text(".messages")
    assert page.inner_text("#status-line") == "Scheduled: it goes out on 3 Dec 2099 at 09:00."
    mail.refresh_from_db()
    assert mail.send_at.isoformat() == "2099-12-03T09:00:00+00:00"
    screenshot(page, "commpanel-scheduled.png")

    # Edit: the content changes, the time stays.
    page.click("#edit")
    page.wait_for_url("**/edit/")
    assert "scheduled for 3 Dec 2099 at 09:00" in page.inner_text("#edit-scheduled")
    page.fill("#id_subject", "Term dates (corrected)")
    page.click("button:has-text('Save changes')")
    page.wait_for_url(f"**/commpanel/requests/{mail.pk}/")
    assert "Changes saved. This will be sent to 2 addresses on 3 Dec 2099 at 09:00." in page.inner_text(".messages")
    mail.refresh_from_db()
    assert (mail.subject, mail.status) == ("Term dates (corrected)", MessageRequest.Status.QUEUED)

    page.click("#cancel")
    page.wait_for_url(f"**/commpanel/requests/{mail.pk}/")
    assert dialogs[-1] == "Cancel this scheduled request? Nothing will be sent."
    assert page.inner_text(".messages") == "Cancelled: nothing was sent."
    assert page.inner_text("#request-status") == "Cancelled"


def test_a_send_that_ends_before_the_first_poll_loses_its_cancel_button(browser_page, settings):
    # The newcomer's walk: the demo's sender loop sent both emails before the page first polled, and the
    # finished request still offered "Cancel the rest" until a reload.
    from dbmail.models import TextOfEmail

    page, server = browser_page
    settings.DBMAIL_PANEL_POLL_SECONDS = 2
    office = SenderAccountFactory()
    mail = MessageRequestFactory(sender=office, status=MessageRequest.Status.EXPANDED, subject="Staff meeting")
    for address in ("ann@example.org", "bob@example.org"):
        TextOfEmailFactory(request=mail, account=office, to_address=address, status="queued")
    page.goto(f"{server.url}/commpanel/requests/{mail.pk}/")
    assert page.inner_text("#request-status") == "Sending"
    assert "Cancel the rest" in page.inner_text("#actions")
    TextOfEmail.objects.filter(request=mail).update(status="sent", sent_at=timezone.now())
    page.evaluate("window.notReloaded = true")

    page.wait_for_function("document.getElementById('request-status').textContent === 'Done'")
    assert page.inner_text("#status-line") == "Done: 2 sent."
    assert "Cancel the rest" not in page.inner_text("#actions")
    assert "Reuse as new request" in page.inner_text("#actions")
    assert page.evaluate("window.notReloaded") is True


def test_the_requests_list_fits_a_desktop_window_without_scrolling_sideways(browser_page):
    # The newcomer's walk: the demo's one request pushed "Send at" out of the list at 1280 px.
    page, server = browser_page
    office = SenderAccountFactory(address="office@example.org", display_name="mailsite office")
    mail = MessageRequestFactory(
        sender=office, status=MessageRequest.Status.EXPANDED, subject="Welcome, {{ first_name }}!"
    )
    for _ in range(5):
        TextOfEmailFactory(request=mail, account=office, status="sent", sent_at=timezone.now())
    for width in (1280, 1440):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{server.url}/commpanel/")
        assert "5 sent" in page.inner_text("table.list")
        fits = "(() => { const t = document.querySelector('table.list'); return t.scrollWidth <= t.parentElement.clientWidth })()"
        assert page.evaluate(fits), width
