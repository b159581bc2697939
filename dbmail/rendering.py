"""What each recipient gets: a request's templates rendered with plain values.

Templates are compiled once per request by private engines that load no
files, so a composed mail cannot {% include %} a site template. The context
holds strings and numbers only, never ORM objects, so a template cannot walk
from a user to anything else.
"""

import re
import secrets
import time
from dataclasses import dataclass
from html.parser import HTMLParser

from django.conf import settings
from django.template import Context, Engine, TemplateSyntaxError

_TEXT_ENGINE = Engine(autoescape=False, loaders=[])
_HTML_ENGINE = Engine(autoescape=True, loaders=[])
# Debug engines only for checking: they attach the failing line to the error.
_CHECK_TEXT_ENGINE = Engine(autoescape=False, loaders=[], debug=True)
_CHECK_HTML_ENGINE = Engine(autoescape=True, loaders=[], debug=True)

_WHITESPACE = re.compile(r"\s+")

RECIPIENT_VARIABLES = ("first_name", "last_name", "name", "email", "username")
SITE_VARIABLES = ("site_name", "site_url", "unsubscribe_url")


class RenderError(Exception):
    pass


@dataclass
class Rendered:
    subject: str
    text: str
    html: str


def template_errors(request):
    """Map of field name -> message with the line, for each template that does not compile."""
    errors = {}
    for field, engine in (
        ("subject", _CHECK_TEXT_ENGINE),
        ("text_body", _CHECK_TEXT_ENGINE),
        ("html_body", _CHECK_HTML_ENGINE),
    ):
        try:
            engine.from_string(getattr(request, field) or "")
        except TemplateSyntaxError as exc:
            info = getattr(exc, "template_debug", None) or {}
            line = f"line {info['line']}: " if "line" in info else ""
            errors[field] = f"Template error on {line}{exc}"
    return errors


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


class CompiledRequest:
    """A request's templates compiled once, rendered per recipient."""

    def __init__(self, request):
        try:
            self.subject = _TEXT_ENGINE.from_string(request.subject)
            self.text = _TEXT_ENGINE.from_string(request.text_body) if request.text_body.strip() else None
            self.html = _HTML_ENGINE.from_string(request.html_body) if request.html_body.strip() else None
        except TemplateSyntaxError as exc:
            raise RenderError(f"template error: {exc}") from exc
        self.base = {
            "site_name": settings.DBMAIL_SITE_NAME,
            "site_url": settings.DBMAIL_SITE_URL,
            **{k: v for k, v in (request.context or {}).items() if isinstance(k, str)},
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

    def render(self, context):
        try:
            ctx = Context(context, autoescape=False)
            subject = _WHITESPACE.sub(" ", self.subject.render(ctx)).strip()
            text = self.text.render(ctx) if self.text else ""
            html = self.html.render(Context(context)) if self.html else ""
        except Exception as exc:  # a filter or tag can raise anything; the row is dropped with it
            raise RenderError(f"render error: {exc.__class__.__name__}: {exc}") from exc
        if html and not text:
            text = html_to_text(html)
        return Rendered(subject, text, html)


def new_message_id():
    # Not email.utils.make_msgid: it draws on the process-wide `random`, which any library
    # (or a test framework) may reseed, and two senders would then mint the same IDs.
    return f"<{time.time_ns()}.{secrets.token_hex(8)}@{settings.DBMAIL_MESSAGE_ID_DOMAIN}>"
