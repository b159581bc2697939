"""The HTML body from what the author wrote: raw HTML as it is, rich text cleaned, Markdown converted.

Both the WYSIWYG editor's HTML and Markdown's output are cleaned with nh3
(the ammonia sanitiser) to the tags and attributes mail clients show: the
author is staff, but a pasted page brings scripts, forms and styles along.
Django template syntax ({{ name }}, {% if %}) is set aside before either step
and put back after, so neither Markdown nor the sanitiser can touch it (an
underscore in `first_name` is no emphasis; quotes in a filter stay quotes).
Raw HTML (BodyFormat.HTML) is the author's own template and is not cleaned.
"""

import re
import secrets

import markdown
import nh3
from django.template.base import tag_re

from dbmail.models import BodyFormat

# What an email body may keep: text structure, links, images, tables; no scripts, forms, frames or styles.
TAGS = {
    "a", "b", "blockquote", "br", "code", "del", "div", "em", "h1", "h2", "h3", "h4", "hr", "i", "img", "li",
    "ol", "p", "pre", "s", "span", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align"},
    "ol": {"start"},
}
URL_SCHEMES = {"http", "https", "mailto", "tel"}
_MARKDOWN_EXTENSIONS = ["extra", "sane_lists"]


def html_body(body_format, text_body, html_body):
    """The HTML body to store for a request or template written in `body_format`."""
    if body_format == BodyFormat.MARKDOWN:
        return markdown_to_html(text_body)
    if body_format == BodyFormat.RICH:
        return clean(html_body)
    return html_body


def markdown_to_html(source):
    """Markdown (with Django template syntax in it) -> a clean HTML fragment that is still a template."""
    if not (source or "").strip():
        return ""
    text, saved, nonce = _set_aside(source)
    html = markdown.markdown(text, extensions=_MARKDOWN_EXTENSIONS, output_format="html")
    return _restore(_sanitise(html), saved, nonce)


def clean(html):
    """An HTML fragment reduced to TAGS and ATTRIBUTES; template syntax in it is kept as written."""
    if not (html or "").strip():
        return ""
    text, saved, nonce = _set_aside(html)
    return _restore(_sanitise(text), saved, nonce)


def _sanitise(html):
    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()


def _set_aside(source):
    """Replace each template token with a placeholder neither Markdown nor the sanitiser changes."""
    nonce = secrets.token_hex(4)
    saved = []

    def keep(match):
        saved.append(match.group(0))
        return f"tpl{nonce}x{len(saved) - 1}x"

    return tag_re.sub(keep, source), saved, nonce


def _restore(html, saved, nonce):
    # A block tag alone on its line became a paragraph of its own: unwrap it, so a false
    # {% if %} leaves no empty paragraph behind.
    alone = re.compile(rf"<p>(tpl{nonce}x\d+x)</p>")
    html = alone.sub(lambda m: m.group(1) if saved[_index(m.group(1), nonce)].startswith("{%") else m.group(0), html)
    return re.sub(rf"tpl{nonce}x(\d+)x", lambda m: saved[int(m.group(1))], html)


def _index(placeholder, nonce):
    return int(placeholder[len(f"tpl{nonce}x") : -1])
