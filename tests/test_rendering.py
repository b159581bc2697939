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


_defaults = st.text(st.sampled_from("ab <>&'.,!?-_é0"), max_size=8)
_variables = st.one_of(
    _names.map(lambda n: "{{ " + n + " }}"),
    st.tuples(_names, _defaults).map(lambda nd: "{{ " + nd[0] + '|default:"' + nd[1] + '" }}'),
)


@hsettings(max_examples=400, deadline=None)
@given(
    parts=st.lists(st.one_of(_text, _variables), max_size=12),
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


@hsettings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2003\u2028\u3000ab.")) | st.text())
def test_one_line_is_the_regex_it_stands_for(text):
    assert rendering.one_line(text) == rendering._WHITESPACE.sub(" ", text).strip()


def test_the_only_printable_whitespace_is_the_space():
    # What one_line's shortcut relies on, for every code point.
    import sys

    everything = map(chr, range(sys.maxunicode + 1))
    assert [c for c in everything if c.isprintable() and rendering._WHITESPACE.fullmatch(c)] == [" "]


@pytest.mark.parametrize(
    "source",
    [
        "{{ name|upper }}",
        "{% if name %}x{% endif %}",
        "{{ user.name }}",
        "{{ True }}",
        "{{ 'lit' }}",
        "{{ name|default:other }}",
        "{{ name|default:0 }}",
        '{{ name|default:"x"|upper }}',
    ],
)
def test_anything_beyond_text_and_names_is_left_to_the_engine(source):
    assert rendering.PlainTemplate.of(rendering._TEXT_ENGINE.from_string(source), False) is None


def test_a_default_is_used_for_missing_empty_and_false_values_and_never_escaped():
    c = compiled(subject="{{ first_name|default:'you' }}", html='<p>Hi {{ nick|default:"<friend>" }}</p>')
    assert c.plain[c.html] is not None  # the engine-free path
    assert c.render({"first_name": "", "nick": None}).html.startswith("<p>Hi <friend></p>")
    assert c.render({"first_name": "Ann", "nick": "<b>"}).html.startswith("<p>Hi &lt;b&gt;</p>")
    assert c.render({"first_name": 0}).subject == "you"


def test_a_value_that_is_not_plain_is_rendered_by_the_engine():
    c = compiled(text="{{ items }}")
    assert c.render({"items": ["a", "b"]}).text == "['a', 'b']"


# --- Half-written template syntax, and the unsubscribe footer every body carries ---


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("Hi {{ first_name }", "“{{ first_name }” is not closed"),
        ("a\nb {% if vip }", "line 2: “{% if vip }” is not closed"),
        ("Hi { first_name }} there", "“Hi { first_name }}” closes a variable that was never opened"),
        ("{ if x %}", "closes a tag that was never opened"),
        ("{# note", "comment"),
    ],
)
def test_half_braces_are_template_errors(source, fragment):
    errors = rendering.template_errors(MessageRequest(subject="S", text_body=source, html_body=""))
    assert fragment in errors["text_body"]


@pytest.mark.parametrize(
    "source",
    ["{{ a }} {% if b %}c{% endif %} {# d #}", ".a{color:red}} .b{width:100%}}", "{ a: 1 }", "100% }"],
)
def test_whole_tokens_and_css_are_not_half_braces(source):
    assert rendering.half_brace(source) == ""


def test_a_body_without_the_link_gets_a_footer_with_it():
    out = render(text="Hello", html="<html><body><p>Hello</p></body></html>")
    assert out.text == "Hello\n\n--\nNo longer want these emails? Unsubscribe: https://x/unsub/1/\n"
    assert out.html.startswith('<html><body><p>Hello</p><p class="mail-foot"')
    assert out.html.endswith('<a href="https://x/unsub/1/" style="color:#656d76;">Unsubscribe</a>.</p></body></html>')


def test_no_footer_where_the_author_placed_the_link_or_there_is_no_link():
    placed = render(text="Bye: {{ unsubscribe_url }}", html='<a href="{{ unsubscribe_url }}">out</a>')
    assert placed.text == "Bye: https://x/unsub/1/" and placed.html == '<a href="https://x/unsub/1/">out</a>'
    c = compiled(text="Hello", html="<p>Hello</p>")
    public = c.render(c.context_for(Recipient(email=""), ""))  # the web version has no link to give
    assert (public.text, public.html) == ("Hello", "<p>Hello</p>")


def test_rich_and_markdown_bodies_are_sent_in_the_house_layout():
    c = rendering.CompiledRequest(
        MessageRequest(subject="S", text_body="", html_body="<p>Hi {{ first_name }}</p>", body_format="rich")
    )
    out = c.render(c.context_for(Recipient(email="a@x.org", first_name="Ann"), "https://x/u/"))
    assert out.html.startswith("<!doctype html>") and '<meta name="color-scheme" content="light dark">' in out.html
    assert "<p>Hi Ann</p>" in out.html and out.html.index("Unsubscribe") < out.html.index("</body>")
