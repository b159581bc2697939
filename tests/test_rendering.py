import pytest

from dbmail.content import rendering
from dbmail.content.recipients import Recipient
from dbmail.models import MessageRequest


def compiled(subject="S", text="", html="", context=None):
    return rendering.CompiledRequest(
        MessageRequest(subject=subject, text_body=text, html_body=html, context=context or {})
    )


def render(recipient=None, **kwargs):
    c = compiled(**kwargs)
    rcpt = recipient or Recipient(email="ann@example.org", name="Ann <Smith>", first_name="Ann", last_name="Smith")
    return c.render(c.context_for(rcpt, "https://x/unsub/1/"))


def test_subject_is_one_line_and_not_escaped():
    out = render(subject="Hello {{ name }},\n  news &\tmore", text="x")
    assert out.subject == "Hello Ann <Smith>, news & more"


def test_text_is_not_escaped_and_html_is():
    out = render(text="{{ name }} {{ unsubscribe_url }}", html="<p>{{ name }}</p>")
    assert out.text == "Ann <Smith> https://x/unsub/1/"  # the body has its link: no footer
    assert out.html.startswith("<p>Ann &lt;Smith&gt;</p>")


def test_html_only_gets_a_text_part():
    out = render(html="<h1>News</h1><p>Read <a href='https://e.org/a'>this</a>.<br>Bye</p><style>p{}</style>")
    assert out.text == (
        "News\n\nRead this (https://e.org/a).\nBye\n\nNo longer want these emails? Unsubscribe (https://x/unsub/1/).\n"
    )


def test_context_has_plain_values_with_recipient_over_request_over_site(settings):
    settings.DBMAIL_SITE_NAME = "Physics"
    c = compiled(context={"site_name": "Override", "email": "spoof@x", "term": "spring"})
    ctx = c.context_for(Recipient(email="ann@example.org", variables={"term": "autumn"}), "")
    assert ctx["site_name"] == "Override" and ctx["email"] == "ann@example.org" and ctx["term"] == "autumn"
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in ctx.values())


def test_templates_cannot_load_site_templates():
    with pytest.raises(rendering.RenderError):
        render(text="{% include 'base.html' %}")


def test_template_errors_name_the_line():
    request = MessageRequest(subject="ok", text_body="line one\n{% if %}\n", html_body="<p>{{ a|nosuchfilter }}</p>")
    errors = rendering.template_errors(request)
    assert set(errors) == {"text_body", "html_body"}
    assert "line 2" in errors["text_body"]
    assert "nosuchfilter" in errors["html_body"] and "line 1" in errors["html_body"]


def test_message_ids_are_unique_and_use_the_configured_domain(settings):
    settings.DBMAIL_MESSAGE_ID_DOMAIN = "mail.example.org"
    ids = {rendering.new_message_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.endswith("@mail.example.org>") for i in ids)


# --- The engine-free path for plain templates must give the engine's output exactly ---

from hypothesis import given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_names = st.sampled_from(["first_name", "name", "email", "balance", "missing", "note"])
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="{}%#"), max_size=40)
_values = st.one_of(
    st.text(max_size=30), st.integers(-(10**6), 10**6), st.floats(allow_nan=False, width=32), st.booleans(), st.none()
)


@hsettings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.one_of(_text, _names.map(lambda n: "{{ " + n + " }}")), max_size=12),
    values=st.dictionaries(_names.filter(lambda n: n != "missing"), _values),
    autoescape=st.booleans(),
)
def test_plain_templates_render_exactly_as_the_engine_does(parts, values, autoescape):
    from django.template import Context

    engine = rendering._HTML_ENGINE if autoescape else rendering._TEXT_ENGINE
    template = engine.from_string("".join(parts))
    plain = rendering.PlainTemplate.of(template, autoescape)
    assert plain is not None
    assert plain.render(values) == template.render(Context(values, autoescape=autoescape))


@pytest.mark.parametrize(
    "source", ["{{ name|upper }}", "{% if name %}x{% endif %}", "{{ user.name }}", "{{ True }}", "{{ 'lit' }}"]
)
def test_anything_beyond_text_and_names_is_left_to_the_engine(source):
    assert rendering.PlainTemplate.of(rendering._TEXT_ENGINE.from_string(source), False) is None


def test_a_value_that_is_not_plain_is_rendered_by_the_engine():
    c = compiled(text="{{ items }}")
    assert c.render({"items": ["a", "b"]}).text == "['a', 'b']"
