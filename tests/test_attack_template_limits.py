"""Attack: a composed template made to exhaust memory or time (dbmail.content.template_limits).

A staff composer or an API user writes `{{ email|ljust:"1000000000" }}`, loops
nested over long strings, or any other filter or tag that makes as much as its
argument asks. Saving refuses it with the reason (the compose page, its live
check, the API); one that reaches expansion anyway (the limit lowered later, a
recipient's value) fails its own request with the reason in a real
`dbmail_cron` run, while every other request and email goes out; the preview
shows the reason, never a 500. Each attack is bounded in time by an alarm, so a
missing limit fails the test instead of hanging the suite.
"""

import html
import io
import time

import pytest
from django.core.management import CommandError, call_command
from django.template import Context, Engine
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from dbmail.conf import settings as conf
from dbmail.content import rendering, template_limits, validation
from dbmail.content.recipients import Recipient
from dbmail.exceptions import RenderLimitExceeded
from dbmail.intake import expand
from dbmail.models import AuditEvent, MessageRequest

from .conftest import fuzz_settings, time_limit
from .factories import MessageRequestFactory, SenderAccountFactory, TextOfEmailFactory, UserFactory
from .sendingapi import client_for, composer

Status = MessageRequest.Status
LONG = "x" * 500
OUTPUT = "would exceed 1 MB (DBMAIL_MAX_RENDERED_BYTES)"
MADE = "more than 8 MB of text while rendering"
LOOPS = "loops would run more than 50,000 iterations"


def nested_with(start, step, depth=40):
    """`{% with a=START %}` then DEPTH times `{% with a=a|STEP %}`, printing a's length: a result doubled each time."""
    opened = f"{{% with a={start} %}}" + f"{{% with a=a|{step} %}}" * depth
    return opened + "{{ a|length }}" + "{% endwith %}" * (depth + 1)


# name -> (template, words of the reason). Each makes gigabytes or runs for minutes without the budget.
ATTACKS = {
    "ljust": ('{{ email|ljust:"1000000000" }}', OUTPUT),
    "rjust": ('{{ email|rjust:"1000000000" }}', OUTPUT),
    "center": ('{{ email|center:"1000000000" }}', OUTPUT),
    "stringformat-width": ('{{ email|stringformat:"1000000000s" }}', OUTPUT),
    "stringformat-precision": ('{{ 1.5|stringformat:".1000000000f" }}', OUTPUT),
    "floatformat-places": ('{{ 1.5|floatformat:"1000000000" }}', OUTPUT),
    "nested-loops": (
        f'{{% for a in "{LONG}" %}}{{% for b in "{LONG}" %}}{{% for c in "{LONG}" %}}.'
        "{% endfor %}{% endfor %}{% endfor %}",
        LOOPS,
    ),
    "loop-over-a-padded-value": ('{% for c in email|ljust:"1000000" %}{{ c }}{% endfor %}', LOOPS),
    "wide-loop-body": ('{% for c in "' + "x" * 100 + '" %}' + "{{ c }}" * 1000 + "{% endfor %}", LOOPS),
    "loop-output": ('{% for c in "' + "x" * 1000 + '" %}' + "y" * 2000 + "{% endfor %}", OUTPUT),
    "lorem-words": ("{% lorem 100000000 w %}", OUTPUT),
    "lorem-paragraphs": ("{% lorem 1000000 p %}", OUTPUT),
    "join-separator": ('{{ email|ljust:"100000"|make_list|join:email|length }}', OUTPUT),
    "add-doubling": (nested_with("email", "add:a"), MADE),
    "addslashes-doubling": (nested_with("backslash", "addslashes"), MADE),
    "make-list": ('{% with a=email|ljust:"1000000"|make_list %}{{ a|length }}{% endwith %}', MADE),
    "a-long-value-printed-often": ("{{ big }}" * 2000, OUTPUT),  # text and names only: the fast path
    "a-long-value-printed-and-dropped": ("{% filter length %}" + "{{ big }}" * 2000 + "{% endfilter %}", MADE),
    "regroup-over-a-long-string": ('{% regroup email|ljust:"1000000" by x as g %}{{ g|length }}', LOOPS),
    "hidden-in-an-if": ('{% if email|ljust:"1000000000" == "x" %}yes{% endif %}', OUTPUT),
    "filter-tag": ('{% filter ljust:"1000000000" %}x{% endfilter %}', OUTPUT),
    "a-long-value-read-often": ("{{ big|wordcount }}" * 2000, MADE),
    "firstof-printed-and-dropped": ("{% filter length %}" + "{% firstof big %}" * 2000 + "{% endfilter %}", MADE),
    "cycle-printed-and-dropped": ("{% filter length %}" + "{% cycle big big %}" * 2000 + "{% endfilter %}", MADE),
    "cycle-in-nested-loops": (
        f'{{% for a in "{LONG}" %}}{{% for b in "{LONG}" %}}{{% cycle "p" "q" %}}{{% endfor %}}{{% endfor %}}',
        LOOPS,
    ),
}


def within(seconds):
    """Fail the test (instead of hanging) if the block takes longer than `seconds`."""
    return time_limit(seconds, lambda: TimeoutError(f"took more than {seconds} s: not limited"))


def compiled(text_body="Fine.", html_body="", context=None):
    return rendering.CompiledRequest(
        MessageRequest(
            subject="Hi", text_body=text_body, html_body=html_body, body_format="html", context=context or {}
        )
    )


ANN = Recipient(email="ann@example.org", name="Ann Smith", first_name="Ann", last_name="Smith", username="ann")
VALUES = {"big": "b" * 10_000, "backslash": "\\"}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("part", ["text_body", "html_body"])
def test_each_attack_is_refused_at_once_with_its_reason(name, part):
    template, words = ATTACKS[name]
    mail = compiled(**{part: template}, context=VALUES)
    with within(10), pytest.raises(RenderLimitExceeded) as refused:
        mail.render(mail.context_for(ANN, "https://example.org/u/1"))
    assert words in str(refused.value)
    assert str(refused.value).startswith("text body: " if part == "text_body" else "HTML body: ")


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_saving_refuses_each_attack_with_its_reason(name):
    template, words = ATTACKS[name]
    probe = MessageRequest(subject="Hi", text_body="Fine.", html_body=template, body_format="html", context=VALUES)
    with within(10):
        errors = rendering.template_errors(probe)
    assert list(errors) == ["html_body"] and errors["html_body"].startswith("Template error: ") and words in str(errors)


def test_a_subject_is_limited_too():
    probe = MessageRequest(subject='{{ email|ljust:"1000000000" }}', text_body="Fine.")
    with within(10):
        assert OUTPUT in rendering.template_errors(probe)["subject"]


def test_the_fast_path_caps_a_long_value(settings):
    # Text and names only (the engine is not used): a value alone may make the mail too long.
    settings.DBMAIL_MAX_RENDERED_BYTES = 10_240
    mail = compiled("Dear {{ first_name }}: {{ note }}")
    assert mail.plain[mail.text] is not None
    context = mail.context_for(Recipient(email="a@example.org", variables={"note": "é" * 6000}))
    with pytest.raises(RenderLimitExceeded, match="would exceed 10 kB"):  # 6,000 characters, 12,000 bytes
        mail.render(context)
    context["note"] = "é" * 5000
    assert mail.render(context).text.endswith("é" * 5000)


def test_within_budget_a_template_renders_as_before():
    # What real mail does with the same filters and tags stays exactly Django's.
    source = (
        "{{ name|ljust:12 }}|{{ name|rjust:12 }}|{{ name|center:12 }}|{{ 3.14159|floatformat:3 }}|"
        '{{ 42|stringformat:"05d" }}|{{ items|join:", " }}|{{ items|add:more|length }}|{{ name|make_list|first }}|'
        "{% for i in items %}{{ forloop.counter }}:{{ i|upper }}{% cycle ',' ';' %}{% empty %}none{% endfor %}|"
        "{% regroup people by team as teams %}{% for t in teams %}{{ t.grouper }}={{ t.list|length }} {% endfor %}|"
        "{% lorem 3 w %}|{% widthratio 30 60 100 %}|{{ name|truncatechars:4 }}|{{ long|wordwrap:10 }}|"
        '{{ name|ljust:"-5" }}|{% firstof missing name %}|{% cycle "a" name as c %}{% cycle c %}|'
        "{% filter upper %}{{ name }}{% endfilter %}|{{ items|slice:':1' }}|{{ 1.5|floatformat:'-3' }}|"
        '{{ "a&b"|addslashes }}{{ "<x>" }}'
    )
    values = {
        "name": "Ann <&>",
        "items": ["a", "<b>"],
        "more": ["c"],
        "people": [{"team": "x"}, {"team": "x"}, {"team": "y"}],
        "long": "one two three four five six",
    }
    for autoescape in (False, True):
        engine = rendering._HTML_ENGINE if autoescape else rendering._TEXT_ENGINE
        django = Engine(autoescape=autoescape)
        expected = django.from_string(source).render(Context(values, autoescape=autoescape))
        got = template_limits.render(engine.from_string(source), Context(values, autoescape=autoescape), 1 << 20)
        assert got == expected


def test_debug_prints_nothing_in_mail_even_with_debug_on(settings):
    # Django's {% debug %} prints the context and every loaded module when DEBUG is on (make run):
    # the preview would show, and each recipient get, what production never sends.
    settings.DEBUG = True
    for engine in (rendering._TEXT_ENGINE, rendering._HTML_ENGINE, rendering._CHECK_HTML_ENGINE):
        got = template_limits.render(engine.from_string("a{% debug %}b"), Context({"name": "Ann"}), 1 << 20)
        assert got == "ab"


@fuzz_settings(60)
@given(
    widths=st.lists(st.integers(min_value=-5, max_value=300), min_size=1, max_size=5),
    text=st.text(max_size=30),
    places=st.integers(min_value=-20, max_value=20),
)
def test_padding_and_numbers_within_budget_are_djangos(widths, text, places):
    source = (
        "".join(f'{{{{ v|ljust:{w} }}}}{{{{ v|center:{w} }}}}{{{{ v|stringformat:"{w}s" }}}}' for w in widths)
        + f'{{{{ n|floatformat:"{places}" }}}}{{{{ v|make_list|join:v }}}}'
    )
    values = {"v": text, "n": "1234.56789"}
    expected = Engine(autoescape=True).from_string(source).render(Context(values))
    got = template_limits.render(rendering._HTML_ENGINE.from_string(source), Context(values), 1 << 20)
    assert got == expected


# --- The setting ---


@pytest.mark.parametrize("value", [5, 10_239, "1MB", True])
def test_a_bad_limit_fails_the_check_naming_the_setting(settings, value):
    settings.DBMAIL_MAX_RENDERED_BYTES = value
    assert any("DBMAIL_MAX_RENDERED_BYTES" in error.msg for error in conf.check())


def test_the_default_limit_is_1_mb_and_passes_the_check(settings):
    del settings.DBMAIL_MAX_RENDERED_BYTES
    assert conf.DBMAIL_MAX_RENDERED_BYTES == 1024 * 1024
    assert not [e for e in conf.check() if "DBMAIL_MAX_RENDERED_BYTES" in e.msg]


def test_a_lower_limit_is_what_the_reason_names(settings):
    settings.DBMAIL_MAX_RENDERED_BYTES = 20_000
    errors = rendering.template_errors(MessageRequest(subject="Hi", text_body='{{ email|ljust:"30000" }}'))
    assert "would exceed 20,000 bytes (DBMAIL_MAX_RENDERED_BYTES)" in errors["text_body"]


# --- Through the comm panel, as staff ---


def compose_data(sender, **extra):
    return {
        "sender": sender.pk,
        "reply_to": "",
        "subject": "Hello {{ first_name }}",
        "text_body": "Hello.\n",
        "html_body": "",
        "source": "paste",
        "addresses": "ann@example.org",
        **extra,
    }


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["ljust", "nested-loops", "stringformat-width", "lorem-words", "add-doubling"])
def test_the_compose_page_refuses_the_attack_and_saves_nothing(panel, name):
    template, words = ATTACKS[name]
    with within(20):
        response = panel.post(reverse("commpanel:compose"), compose_data(SenderAccountFactory(), text_body=template))
    assert response.status_code == 200
    assert words in response.context["form"].errors["text_body"][0]
    assert words in html.unescape(response.content.decode())
    assert not MessageRequest.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["center", "nested-loops", "floatformat-places", "join-separator"])
def test_the_live_check_reports_the_attack_and_previews_no_mail(panel, name):
    template, words = ATTACKS[name]
    with within(20):
        response = panel.post(reverse("commpanel:check"), {"subject": "Hi", "text_body": "x", "html_body": template})
    assert response.status_code == 200
    result = response.json()
    assert result["ok"] is False and words in result["errors"]["html_body"]
    assert words in result["preview_error"] and "preview" not in result


@pytest.mark.django_db
def test_a_saved_template_is_checked_the_same(panel):
    data = {"name": "Huge", "subject": "Hi", "text_body": ATTACKS["rjust"][0], "html_body": "", "body_format": "html"}
    with within(20):
        response = panel.post(reverse("commpanel:template_new"), data)
    assert response.status_code == 200 and OUTPUT in html.unescape(response.content.decode())


def over_budget_request(**fields):
    """A request saved before the limit was lowered: within 1 MB, over the 20,000 bytes set afterwards."""
    defaults = dict(
        status=Status.DRAFT,
        subject="Hi {{ first_name }}",
        text_body='{{ email|ljust:"30000" }}',
        recipient_set="addresses",
        recipient_params={"rows": [{"email": "ann@example.org", "first_name": "Ann"}]},
    )
    return MessageRequestFactory(**{**defaults, **fields})


@pytest.mark.django_db
def test_the_request_page_shows_the_reason_instead_of_the_preview(panel, settings):
    mail = over_budget_request()
    settings.DBMAIL_MAX_RENDERED_BYTES = 20_000
    with within(20):
        response = panel.get(reverse("commpanel:request", args=[mail.pk]))
    assert response.status_code == 200
    assert "would exceed 20,000 bytes (DBMAIL_MAX_RENDERED_BYTES)" in response.context["preview_error"]
    assert "would exceed 20,000 bytes" in html.unescape(response.content.decode())


@pytest.mark.django_db
def test_a_test_mail_of_it_is_not_sent_and_says_why(panel, settings):
    mail = over_budget_request()
    settings.DBMAIL_MAX_RENDERED_BYTES = 20_000
    response = panel.post(reverse("commpanel:test", args=[mail.pk]), follow=True)
    assert response.status_code == 200
    assert "Not sent: text body: the template's output would exceed 20,000 bytes" in html.unescape(
        response.content.decode()
    )


# --- Through the API ---


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["ljust", "nested-loops", "lorem-paragraphs", "addslashes-doubling"])
def test_the_api_refuses_the_attack_with_a_400_naming_the_reason(name):
    SenderAccountFactory(address="office@example.org")
    template, words = ATTACKS[name]
    body = {
        "sender": "office@example.org",
        "subject": "Hello",
        "text_body": "Fine.",
        "html_body": template,
        "context": {"backslash": "\\"},
        "rows": ["cy@example.net"],
    }
    with within(20):
        response = client_for(composer("ann")).post("/api/v1/requests/", body, format="json")
    assert response.status_code == 400
    assert words in response.json()["html_body"][0]
    assert not MessageRequest.objects.exists()


# --- At expansion, in a real dbmail_cron run ---


def run_cron():
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match=r"1 request\(s\) failed"):
        call_command("dbmail_cron", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_limit_lowered_after_saving_fails_that_request_alone(smtp_server, settings):
    bad = over_budget_request(status=Status.QUEUED)
    validation.full_clean(bad)  # it was a good request when it was saved
    good = MessageRequestFactory(recipient_set="addresses", recipient_params={"rows": ["ok@example.net"]})
    TextOfEmailFactory(to_address="adhoc@example.net")
    settings.DBMAIL_MAX_RENDERED_BYTES = 20_000

    with within(60):
        _, err = run_cron()

    reason = "text body: the template's output would exceed 20,000 bytes (DBMAIL_MAX_RENDERED_BYTES)"
    bad.refresh_from_db()
    assert bad.status == Status.FAILED and bad.failure.startswith(reason)
    assert "(rendering the mail for ann@example.org)" in bad.failure
    assert f"request #{bad.pk}: {reason}" in err
    assert AuditEvent.objects.get(request=bad, kind=AuditEvent.Kind.FAILURE).detail.startswith(reason)
    assert MessageRequest.objects.get(pk=good.pk).status == Status.EXPANDED
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == ["adhoc@example.net", "ok@example.net"]


@pytest.mark.django_db(transaction=True)
def test_a_recipients_value_that_makes_the_mail_huge_fails_the_request_not_the_run(smtp_server):
    UserFactory(email="member@example.net")
    rows = [{"email": "small@example.net", "note": "hi"}, {"email": "big@example.net", "note": "n" * 1500}]
    bad = MessageRequestFactory(
        text_body="{% for c in note %}{{ note }}{% endfor %}",
        recipient_set="addresses",
        recipient_params={"rows": rows},
    )
    validation.full_clean(bad)  # the sample recipient has no note: saving could not tell
    good = MessageRequestFactory(recipient_set="all_active")  # to member@example.net

    with within(60):
        _, err = run_cron()

    bad.refresh_from_db()
    assert bad.status == Status.FAILED and OUTPUT in bad.failure and "big@example.net" in bad.failure
    assert f"request #{bad.pk}: " in err
    assert MessageRequest.objects.get(pk=good.pk).status == Status.EXPANDED
    assert "member@example.net" in {r for m in smtp_server.received for r in m.rcpt_tos}
    assert "big@example.net" not in {r for m in smtp_server.received for r in m.rcpt_tos}


@pytest.mark.django_db(transaction=True)
def test_nested_loops_saved_past_the_check_fail_at_once_and_the_run_goes_on(smtp_server):
    bad = MessageRequestFactory(
        text_body=ATTACKS["nested-loops"][0],
        recipient_set="addresses",
        recipient_params={"rows": [f"r{i}@example.net" for i in range(50)]},
    )
    TextOfEmailFactory(to_address="adhoc@example.net")
    started = time.monotonic()
    with within(60):
        run_cron()
    assert time.monotonic() - started < 30
    bad.refresh_from_db()
    assert bad.status == Status.FAILED and LOOPS in bad.failure
    assert [m.rcpt_tos for m in smtp_server.received] == [["adhoc@example.net"]]


@pytest.mark.django_db
def test_a_retry_that_would_fail_again_is_refused_with_the_reason(settings):
    mail = over_budget_request(status=Status.FAILED)
    settings.DBMAIL_MAX_RENDERED_BYTES = 20_000
    assert "would exceed 20,000 bytes" in expand.obvious_problem(mail)


@pytest.mark.slow
@pytest.mark.parametrize(
    "value,message",
    [("1MB", "DBMAIL_MAX_RENDERED_BYTES='1MB' is not a valid int"), ("100", "must be at least 10240")],
)
def test_a_bad_limit_in_the_environment_stops_start_up_naming_it(value, message):
    from .test_settings import run_manage

    done = run_manage("check", DBMAIL_MAX_RENDERED_BYTES=value)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("mailsite: Setting DBMAIL_MAX_RENDERED_BYTES") and message in done.stderr
