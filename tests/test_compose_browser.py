"""The compose and template pages in a real headless Chromium (dbmail/static/dbmail/compose.js).

The live "Who gets it" verdict, template errors while typing, the rich-text and
Markdown editors making the HTML body, and a failed save that keeps its files.
Each test saves a screenshot under test-output/. Needs /usr/bin/chromium, as
tests/test_commpanel_browser.py does.
"""

import shutil

import pytest
from django.contrib.auth.models import Group

from dbmail.content import recipients
from dbmail.models import EmailTemplate, MessageRequest, PendingUpload, Suppression

from .conftest import ROOT
from .factories import SenderAccountFactory, UserFactory
from .panel import panel_user
from .test_commpanel_browser import CHROMIUM, CHROMIUM_FLAGS, playwright_session

OUT = ROOT / "test-output"
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does it)")
    # Playwright's sync API keeps an event loop in this thread for the whole module; the ORM
    # calls here (the test database's flush included) are still synchronous.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with playwright_session() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            yield browser
            browser.close()


@pytest.fixture
def page(browser, live_server, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    panel_user("chief", first_name="Chris")
    SenderAccountFactory()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15000)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{live_server.url}/commpanel/compose/")
    page.fill("#id_username", "chief")
    page.fill("#id_password", "pw-for-tests")
    page.click("input[type=submit]")
    page.wait_for_url("**/commpanel/compose/")
    page.base = live_server.url
    yield page
    context.close()


def shot(page, name):
    OUT.mkdir(exist_ok=True)
    path = OUT / f"compose-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def paste(page, selector, text):
    """Put a long text in a field at once, as a paste does (typing 5,000 lines would take minutes)."""
    page.eval_on_selector(
        selector, "(el, text) => { el.value = text; el.dispatchEvent(new Event('input', { bubbles: true })); }", text
    )


def wait_count(page, text):
    page.wait_for_function(f"document.getElementById('audience-count').textContent === {text!r}")


def test_the_live_box_gives_the_verdict_saving_gives(page, tmp_path):
    page.check("input[name=source][value=paste]")
    page.fill("#id_addresses", "a@x.org b@x.org\nfoo@\nBob Smith <bob@x.org>; cat@x.org")
    wait_count(page, "4")
    notes = page.inner_text("#audience-notes")
    assert "Saving would refuse this: 1 bad line(s)" in notes
    assert "line 2: invalid address 'foo@'" in notes

    # 5,000 pasted addresses, two bad lines among them: 4,998 counted, the two lines listed.
    lines = [f"person{i}@example.org" for i in range(5000)]
    lines[17], lines[4000] = "person17@", "not an address"
    paste(page, "#id_addresses", "\n".join(lines))
    wait_count(page, "4,998")
    notes = page.inner_text("#audience-notes")
    assert "line 18: invalid address 'person17@'" in notes
    assert "line 4001: not an email address: 'not an address'" in notes
    page.check("#id_skip_bad")
    page.wait_for_function("document.getElementById('audience-notes').textContent.includes('Left out')")
    assert "Saving would refuse" not in page.inner_text("#audience-notes")

    # A CSV with one bad row: the good rows counted, the bad one listed.
    page.uncheck("#id_skip_bad")
    csv = tmp_path / "people.csv"
    csv.write_text("email,balance\nann@example.org,1\nbroken,2\nbea@example.org,3\n")
    page.check("input[name=source][value=csv]")
    page.set_input_files("#id_csv_file", str(csv))
    wait_count(page, "2")
    notes = page.inner_text("#audience-notes")
    assert "1 bad row(s) in people.csv" in notes and "line 3: invalid address 'broken'" in notes
    assert page.locator("#variables [data-insert='{{ balance }}']").count() == 1
    shot(page, "verdict")

    # Saving says the same: refused, and the summary at the top names it.
    page.fill("#id_subject", "Balance")
    page.fill("#id_text_body", "You owe {{ balance }}.")
    page.click("button:has-text('Save and preview')")
    page.wait_for_selector("#error-summary")
    assert "1 bad row(s) in people.csv" in page.inner_text("#error-summary")
    assert not MessageRequest.objects.exists()


def test_the_count_keeps_its_note_on_what_is_left_out(page):
    Suppression.objects.create(address="gone@x.org", reason="unsubscribed")
    page.check("input[name=source][value=paste]")
    page.fill("#id_addresses", "a@x.org gone@x.org a@x.org")
    wait_count(page, "1")
    # Why 1 and not 3: the note on suppressed addresses and repeats is still there once counted.
    assert "suppressed addresses and repeats left out" in page.inner_text("#audience-notes")


def test_the_parameters_box_shows_only_for_a_set_that_reads_them(page, monkeypatch):
    by_class = recipients.RecipientSet("by_class", "A class", lambda params: [], '{"class": "4b"}')
    monkeypatch.setitem(recipients._REGISTRY, "by_class", by_class)
    page.reload()
    box = page.locator("[data-set=other]")
    for name, shown in [("all_active", False), ("staff", False), ("groups", False), ("by_class", True)]:
        page.select_option("#id_recipient_set", name)
        assert box.is_visible() is shown, name
    assert page.get_attribute("#id_params", "placeholder") == '{"class": "4b"}'
    page.select_option("#id_recipient_set", "groups")
    assert page.locator("[data-set=groups]").is_visible()


# Every confirm() answered "Cancel", and each question kept in window.asked.
REFUSE_CONFIRM = "() => { window.asked = []; window.confirm = (m) => { window.asked.push(m); return false; }; }"


def test_start_from_asks_before_it_replaces_what_was_typed(page):
    page.wait_for_load_state("networkidle")
    page.evaluate(REFUSE_CONFIRM)
    page.fill("#id_subject", "Typed by hand")
    page.select_option("#start-template", "starter:letter")
    page.click("#start-from button")
    page.wait_for_timeout(300)
    assert (
        page.evaluate("window.asked") == ["Start from this template? It replaces everything typed in the form below."]
        and page.input_value("#id_subject") == "Typed by hand"
    )
    assert "template=" not in page.url
    # Nothing typed: no question (one would be answered Cancel and the page would stay), the starter loads.
    page.goto(f"{page.base}/commpanel/compose/")
    page.evaluate(REFUSE_CONFIRM)
    page.select_option("#start-template", "starter:letter")
    page.click("#start-from button")
    page.wait_for_url("**template=starter%3Aletter")
    assert page.input_value("#id_subject") != ""


def test_template_errors_show_while_typing(page):
    page.fill("#id_subject", "Hello {{ first_name }")
    page.wait_for_selector("#live-error-subject:not([hidden])")
    assert "“{{ first_name }” is not closed" in page.inner_text("#live-error-subject")
    page.fill("#id_text_body", "Line one\n{% if vip %}\nno end")
    page.wait_for_function("(document.getElementById('live-error-text_body') || {}).textContent")
    assert "line 2" in page.inner_text("#live-error-text_body")
    shot(page, "template-error")
    page.fill("#id_subject", "Hello {{ first_name }}")
    page.fill("#id_text_body", "Dear {{ first_name }},")
    page.wait_for_selector("#live-error-subject[hidden]", state="attached")
    page.wait_for_function("document.getElementById('live-preview-subject').textContent === 'Hello Chris'")
    page.wait_for_function("document.getElementById('live-preview-text').textContent.startsWith('Dear Chris,')")


def test_a_misspelt_variable_is_warned_of_while_typing(page):
    page.fill("#id_subject", "Hello {{ frist_name }}")
    page.wait_for_selector("#live-warnings:not([hidden])")
    assert page.inner_text("#live-warnings") == "{{ frist_name }} is not a known variable: did you mean first_name?"
    shot(page, "unknown-variable")
    page.fill("#id_subject", "Hello {{ first_name }}")
    page.wait_for_selector("#live-warnings[hidden]", state="attached")


def test_rich_text_and_markdown_make_the_html_body(page):
    students = Group.objects.create(name="Students")
    UserFactory(username="ada", first_name="Ada", groups=[students])
    page.reload()  # the group is new since the page was shown
    page.fill("#id_subject", "News")
    page.check("input[name=body_format][value=rich]")
    editor = page.locator("#rich-editor .ql-editor")
    editor.click()
    page.keyboard.type("Hello ")
    page.keyboard.press("Control+b")
    page.keyboard.type("everyone")
    page.keyboard.press("Control+b")
    page.keyboard.press("Enter")
    page.keyboard.type("See you soon.")
    page.wait_for_function("document.getElementById('id_html_body').value.includes('<strong>everyone</strong>')")
    page.wait_for_function("document.getElementById('live-preview').srcdoc.includes('<strong>everyone</strong>')")
    assert page.frame_locator("#live-preview").locator("strong").inner_text() == "everyone"
    shot(page, "rich-text")
    page.select_option("#id_recipient_set", "groups")
    page.check(f"input[name=groups][value='{students.pk}']")
    wait_count(page, "1")
    page.click("button:has-text('Save and preview')")
    page.wait_for_url("**/commpanel/requests/*/")
    mail = MessageRequest.objects.get()
    assert mail.body_format == "rich"
    assert "<strong>everyone</strong>" in mail.html_body and "See you soon." in mail.html_body

    # Editing the draft again opens the rich-text editor with its content, and keeps it as it was.
    page.goto(f"{page.base}/commpanel/requests/{mail.pk}/edit/")
    page.wait_for_selector("#rich-editor .ql-editor strong")
    assert page.inner_text("#rich-editor .ql-editor strong") == "everyone"
    assert page.input_value("#id_html_body") == mail.html_body

    # A template in Markdown: the HTML body is made from it, shown while typing and stored on save.
    page.goto(f"{page.base}/commpanel/templates/new/")
    page.fill("#id_name", "Minutes")
    page.fill("#id_subject", "Minutes for {{ first_name }}")
    page.check("input[name=body_format][value=markdown]")
    assert "Markdown" in page.inner_text("label[for=id_text_body]")
    page.fill("#id_text_body", "# Minutes\n\nDear {{ first_name }}, the **vote** passed.\n\n- one\n- two\n")
    page.wait_for_function("document.getElementById('live-preview').srcdoc.includes('<h1>Minutes</h1>')")
    frame = page.frame_locator("#live-preview")
    assert frame.locator("strong").inner_text() == "vote"
    assert "Dear Chris" in frame.locator("body").inner_text()
    shot(page, "markdown")
    page.click("button:has-text('Save')")
    page.wait_for_url("**/commpanel/templates/")
    template = EmailTemplate.objects.get()
    assert template.body_format == "markdown"
    assert "<h1>Minutes</h1>" in template.html_body and "<li>one</li>" in template.html_body
    assert template.text_body.startswith("# Minutes")


def test_a_failed_save_keeps_the_csv_and_the_attachments(page, tmp_path):
    csv = tmp_path / "members.csv"
    csv.write_text("email,first_name\nann@example.org,Ann\nbea@example.org,Bea\n")
    leaflet = tmp_path / "leaflet.pdf"
    leaflet.write_bytes(b"%PDF-1.4 leaflet")
    page.check("input[name=source][value=csv]")
    page.set_input_files("#id_csv_file", str(csv))
    page.set_input_files("#id_new_attachments", str(leaflet))
    page.fill("#id_subject", "For {{ first_name }")  # a half brace: the save fails
    page.fill("#id_text_body", "Hello {{ first_name }}")
    wait_count(page, "2")
    page.click("button:has-text('Save and preview')")
    page.wait_for_selector("#error-summary")
    summary = page.inner_text("#error-summary")
    assert "Subject: Template error on line 1" in summary and "The files you chose are kept" in summary
    assert "members.csv" in page.inner_text("#kept-csv")
    assert page.locator("#kept-attachments input[type=checkbox]:checked").count() == 1
    assert PendingUpload.objects.count() == 2
    wait_count(page, "2")  # the live box counts the kept CSV
    shot(page, "kept-files")

    # The summary's link leads to the field; fill it in and save without choosing the files again.
    page.click("#error-summary a[href='#field-subject']")
    page.fill("#id_subject", "For {{ first_name }}")
    page.click("button:has-text('Save and preview')")
    page.wait_for_url("**/commpanel/requests/*/")
    mail = MessageRequest.objects.get()
    assert [r["email"] for r in mail.recipient_params["rows"]] == ["ann@example.org", "bea@example.org"]
    attachment = mail.attachments.get()
    assert attachment.filename == "leaflet.pdf" and attachment.file.read() == b"%PDF-1.4 leaflet"
    assert not PendingUpload.objects.exists()
