"""What each recipient gets: a request's templates rendered with plain values.

Templates are compiled once per request by private engines that load no
files, so a composed mail cannot {% include %} a site template. The context
holds strings and numbers only, never ORM objects, so a template cannot walk
from a user to anything else.
"""

import html
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser

from django.template import Context, TemplateSyntaxError, defaultfilters
from django.template.base import TextNode, Variable, VariableNode, render_value_in_context, tag_re
from django.urls import reverse

from dbmail.conf import settings as conf
from dbmail.content import headers, layout, template_limits
from dbmail.exceptions import RenderError, RenderLimitExceeded

# Each rendering within a budget of output, text made and loop iterations (dbmail.content.template_limits).
_TEXT_ENGINE = template_limits.LimitedEngine(autoescape=False)
_HTML_ENGINE = template_limits.LimitedEngine(autoescape=True)
# Debug engines only for checking: they attach the failing line to the error.
_CHECK_TEXT_ENGINE = template_limits.LimitedEngine(autoescape=False, debug=True)
_CHECK_HTML_ENGINE = template_limits.LimitedEngine(autoescape=True, debug=True)

_WHITESPACE = re.compile(r"\s+")


def one_line(text):
    """`text` with each run of whitespace made one space, and none at either end (a subject line)."""
    # Most subjects are that already: printable (the only printable whitespace is the space,
    # tests/test_rendering.py checks), no two spaces in a row, none at the ends. That test is
    # a tenth of the regex's cost.
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text
    return _WHITESPACE.sub(" ", text).strip()


RECIPIENT_VARIABLES = ("first_name", "last_name", "name", "email", "username")
SITE_VARIABLES = ("site_name", "site_url", "unsubscribe_url", "web_version_url")


@dataclass
class Rendered:
    subject: str
    text: str
    html: str


def template_errors(request):
    """Map of field name -> message with the line, for each template that does not compile, has a half brace or is over budget.

    The one check behind saving (forms, validation.full_clean) and the compose
    page's check while typing, so both say the same. Templates that compile are
    then rendered once for a sample recipient: one over the render budget
    (dbmail.content.template_limits) is refused here rather than failing at
    expansion. Other errors in that render are left alone: they may come from
    the sample's values, and expansion drops the recipients they concern.
    """
    errors = {}
    for field, engine in (
        ("subject", _CHECK_TEXT_ENGINE),
        ("text_body", _CHECK_TEXT_ENGINE),
        ("html_body", _CHECK_HTML_ENGINE),
    ):
        source = getattr(request, field) or ""
        try:
            engine.from_string(source)
        except TemplateSyntaxError as exc:
            info = getattr(exc, "template_debug", None) or {}
            line = f"line {info['line']}: " if "line" in info else ""
            errors[field] = f"Template error on {line}{exc}"
            continue
        half = half_brace(source)
        if half:
            errors[field] = half
    if not errors:
        errors = budget_errors(request)
    return errors


def budget_errors(request):
    """{field: message} for each of `request`'s templates that a sample recipient's render finds over budget."""
    from dbmail.content.recipients import Recipient  # it reads the models: not at import time

    try:
        compiled = CompiledRequest(request)
    except RenderError:
        return {}  # the request's context is no JSON object: the form says so
    sample = Recipient(
        email="sample.recipient@example.org",
        name="Sample Recipient",
        first_name="Sample",
        last_name="Recipient",
        username="sample",
    )
    context = compiled.context_for(sample, unsubscribe_url=conf.DBMAIL_SITE_URL + "/unsubscribe/sample/")
    errors = {}
    for field, template, autoescape in (
        ("subject", compiled.subject, False),
        ("text_body", compiled.text, False),
        ("html_body", compiled.html, True),
    ):
        if template is None:
            continue
        try:
            compiled.render_part(template, context, autoescape)
        except RenderLimitExceeded as exc:
            errors[field] = f"Template error: {exc}."
        except Exception:  # the sample's values may cause it; expansion deals with each recipient's own
            pass
    return errors


# What is left of template syntax once Django's own tokens are taken out: an opener, or a
# closer after a word and a space (`{ first_name }}`; minified CSS such as `a{color:red}}`
# has no space, and `width:100%}` none either).
_HALF_BRACE = re.compile(r"{{|{%|{#|[A-Za-z_][\w.|:\"']*\s+(}}|%})")
_HINT = {
    "{{": "is not closed; a variable is written {{ name }}, with two braces on each side",
    "{%": "is not closed; a tag is written {% name %}",
    "{#": "is not closed; a comment is written {# text #}",
    "}}": "closes a variable that was never opened with {{",
    "%}": "closes a tag that was never opened with {%",
}


def half_brace(source):
    """A message for the first half-written template token in `source` (Django would print it as text), or ""."""
    blanked = tag_re.sub(lambda m: " " * len(m.group(0)), source)
    match = _HALF_BRACE.search(blanked)
    if not match:
        return ""
    kind = match.group(1) or match.group(0)
    line_start = source.rfind("\n", 0, match.start()) + 1
    line_end = source.find("\n", match.start())
    line_end = len(source) if line_end == -1 else line_end
    if kind in ("{{", "{%", "{#"):
        snippet = source[match.start() : min(line_end, match.start() + 40)]
    else:
        snippet = source[max(line_start, match.end() - 40) : match.end()]
    line = source.count("\n", 0, match.start()) + 1
    return f"Template error on line {line}: “{snippet.strip()}” {_HINT[kind]}."


def html_to_text(html):
    """A readable plain text alternative for HTML-only mail: paragraphs kept, links spelled out."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


class _TextExtractor(HTMLParser):
    _BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "tr", "blockquote", "pre"}
    _SKIP = {"style", "script", "head", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []
        self._skip = 0
        self._href = []

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skip += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in self._BLOCK:
            self.parts.append("\n\n")
        elif tag == "a":
            self._href.append(dict(attrs).get("href") or "")

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n\n")
        elif tag == "a" and self._href:
            href = self._href.pop()
            if href and not href.startswith(("#", "mailto:")):
                self.parts.append(f" ({href})")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


class _Name(str):
    """A variable's name among a template's literal text parts; `default`: its |default:"text", or None."""

    default = None


_PLAIN = (str, int, float, bool, type(None))
_CONTEXT_BUILTINS = {"True", "False", "None"}  # Django resolves these names from its own context


def _default_text(filters):
    """The text of a lone `|default:"text"` among a variable's filters, or None."""
    if len(filters) != 1:
        return None
    func, args = filters[0]
    if func is not defaultfilters.default or len(args) != 1:
        return None
    is_lookup, arg = args[0]
    return str(arg) if not is_lookup and isinstance(arg, str) else None


class PlainTemplate:
    """A template that is only text and `{{ name }}` variables, rendered without the engine.

    Django's engine spends ~40 µs a recipient walking nodes and resolving
    variables; a typical mail template is just text and names, and expansion
    renders 10,000 of them a second. Each value still goes through Django's own
    render_value_in_context, so the output is the engine's to the byte
    (tests/test_rendering.py compares the two over generated templates).
    One filter is understood, the commonest in mail: `|default:"text"` with a
    quoted text. Anything else (other tags and filters, dotted lookups, values
    that are not plain) is left to the engine.
    """

    def __init__(self, parts, autoescape):
        self.parts = parts
        self.autoescape = autoescape
        self.context = Context(autoescape=autoescape)  # only read for its rendering flags
        # The output as a list: the text parts in place, a hole for each variable, joined when filled.
        # (str.format would scan the whole template, ~1.5 kB, for every recipient; a join only copies it.)
        self.skeleton = ["" if type(p) is _Name else p for p in parts]
        self.holes = [(i, p, p.default) for i, p in enumerate(parts) if type(p) is _Name]

    @classmethod
    def of(cls, template, autoescape):
        parts = []
        for node in template.nodelist:
            if isinstance(node, TextNode):
                parts.append(node.s)
                continue
            if not isinstance(node, VariableNode):
                return None
            expression = node.filter_expression
            var = expression.var
            default = _default_text(expression.filters)
            plain = (
                (not expression.filters or default is not None)
                and isinstance(var, Variable)
                and var.literal is None
                and not var.translate
                and var.lookups is not None
                and len(var.lookups) == 1
                and var.lookups[0] not in _CONTEXT_BUILTINS
            )
            if not plain:
                return None
            name = _Name(var.lookups[0])
            name.default = default
            parts.append(name)
        return cls(parts, autoescape)

    def render(self, values, limit=sys.maxsize):
        """The rendered text, or None when a value is not plain (the engine must render it).

        RenderLimitExceeded when it would be longer than `limit` characters (one long value printed many
        times); CompiledRequest passes DBMAIL_MAX_RENDERED_BYTES.
        """
        out = self.skeleton.copy()
        escape = html.escape if self.autoescape else None
        for i, name, default in self.holes:
            value = values.get(name, "")  # a missing name: the engine's string_if_invalid
            if default is not None and not value and isinstance(value, _PLAIN):
                # The filter's `value or arg`; a quoted argument is safe text to the engine: never escaped.
                out[i] = default
            elif type(value) is str:
                # What render_value_in_context does with a plain string, without its checks for
                # dates and numbers: as it is, or HTML-escaped (django.utils.html.escape is html.escape).
                out[i] = escape(value) if escape else value
            elif isinstance(value, _PLAIN):
                out[i] = render_value_in_context(value, self.context)
            else:
                return None
        if sum(map(len, out)) > limit:  # characters: each at least a byte (bytes are checked once it is made)
            raise RenderLimitExceeded(template_limits.too_big(limit))
        return "".join(out)


class CompiledRequest:
    """A request's templates compiled once, rendered per recipient."""

    def __init__(self, request):
        context = getattr(request, "context", None)  # saved templates and starters have none
        if context is not None and not isinstance(context, dict):
            raise RenderError(f"the request's context must be a JSON object of variables, not {type(context).__name__}")
        html_source = request.html_body if request.html_body.strip() else ""
        if html_source and getattr(request, "body_format", "html") != "html":
            html_source = layout.wrap(html_source)  # rich text and Markdown are fragments
        # Every body carries the unsubscribe link: added after rendering where the author did not place it.
        self.html_footer = layout.needs_footer(html_source)
        self.text_footer = layout.needs_footer(request.text_body.strip())
        try:
            self.subject = _TEXT_ENGINE.from_string(request.subject)
            self.text = _TEXT_ENGINE.from_string(request.text_body) if request.text_body.strip() else None
            self.html = _HTML_ENGINE.from_string(html_source) if html_source else None
        except TemplateSyntaxError as exc:
            raise RenderError(f"template error: {exc}") from exc
        self.plain = {
            template: PlainTemplate.of(template, autoescape)
            for template, autoescape in ((self.subject, False), (self.text, False), (self.html, True))
            if template is not None
        }
        self.limit = conf.DBMAIL_MAX_RENDERED_BYTES  # read once: expansion renders thousands with it
        self.base = {
            "site_name": conf.DBMAIL_SITE_NAME,
            "site_url": conf.DBMAIL_SITE_URL,
            **{k: v for k, v in (getattr(request, "context", None) or {}).items() if isinstance(k, str)},
            # The site's to give, as the unsubscribe link is: a request's context cannot point it elsewhere.
            "web_version_url": web_version_url(request),
        }

    def context_for(self, recipient, unsubscribe_url=""):
        ctx = dict(self.base)
        ctx.update(recipient.variables)
        ctx.update(
            first_name=recipient.first_name,
            last_name=recipient.last_name,
            name=recipient.name,
            email=recipient.email,
            username=recipient.username,
            unsubscribe_url=unsubscribe_url,
        )
        return ctx

    def render_part(self, template, values, autoescape):
        """One of the compiled templates rendered with `values`, within the render budget."""
        plain = self.plain[template]
        text = plain.render(values, self.limit) if plain is not None else None
        if text is None:
            return template_limits.render(template, Context(values, autoescape=autoescape), self.limit)
        if len(text) * 4 > self.limit:  # plain.render capped its characters; UTF-8 may make them more bytes
            template_limits.check_output(text, self.limit)
        return text

    def render(self, context):
        part = "subject"
        try:
            subject = one_line(self.render_part(self.subject, context, False))
            part = "text body"
            text = self.render_part(self.text, context, False) if self.text else ""
            part = "HTML body"
            html = self.render_part(self.html, context, True) if self.html else ""
        except RenderLimitExceeded as exc:
            raise RenderLimitExceeded(f"{part}: {exc}") from exc
        except Exception as exc:  # a filter or tag can raise anything; the row is dropped with it
            raise RenderError(f"render error: {exc.__class__.__name__}: {exc}") from exc
        url = context.get("unsubscribe_url")
        if url and html and self.html_footer:
            html = layout.add_html_footer(html, url)
        if html and not text:
            text = html_to_text(html)  # the footer's link comes along
        elif url and text and self.text_footer:
            text = layout.add_text_footer(text, url)
        return Rendered(subject, text, html)


def web_version_url(request):
    """The public web version's address of `request` ("" when it has none: not ticked, or a saved template).

    Known before the request is sent (its id is made when "public web version" is ticked), so a
    mail can link it ("View it in your browser"); the page itself shows it once the send time came.
    """
    public_id = getattr(request, "public_id", None)
    if not getattr(request, "public", False) or public_id is None:
        return ""
    return conf.DBMAIL_SITE_URL + reverse("dbmail:web_version", args=[public_id])


class MessageIds:
    """Fresh Message-IDs for many emails (an expansion): the domain read once, the randomness drawn in bulk.

    Each is new_message_id(from_address)'s form. One per process that makes them: a copy inherited across a
    fork would hand out the same random parts twice.
    """

    _BATCH = 1024

    def __init__(self, from_address=None):
        self.domain = headers.message_id_domain(from_address)
        self._random, self._at = b"", 0

    def new(self):
        if self._at >= len(self._random):
            self._random, self._at = os.urandom(8 * self._BATCH), 0
        part = self._random[self._at : self._at + 8].hex()
        self._at += 8
        return f"<{time.time_ns()}.{part}@{self.domain}>"


def new_message_id(from_address=None):
    """A fresh Message-ID for mail from `from_address`, in its domain (dbmail.content.headers.message_id_domain)."""
    # Not email.utils.make_msgid: it draws on the process-wide `random`, which any library
    # (or a test framework) may reseed, and two senders would then mint the same IDs.
    return f"<{time.time_ns()}.{secrets.token_hex(8)}@{headers.message_id_domain(from_address)}>"
