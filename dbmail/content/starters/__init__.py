"""Built-in starter templates: three HTML emails that render well in the major clients.

Offered beside the saved templates (compose's "Start from", the templates page)
and copied into a saved template or a draft when chosen; they are never
stored until then, so a release can improve them. Each is a table-based
layout at most 600 px wide and fluid below, with inline styles and explicit
colours on every cell, `color-scheme` metadata and a dark-mode block, and the
unsubscribe link in its footer. They have no text body: the text part is made
from the HTML (dbmail.content.rendering.html_to_text).
"""

from dataclasses import dataclass
from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Starter:
    key: str
    name: str
    subject: str
    description: str

    @property
    def html_body(self):
        return _read(self.key)

    text_body = ""
    body_format = "html"


STARTERS = (
    Starter("newsletter", "Newsletter", "{{ site_name }}: this month", "A heading, an introduction, two stories side by side (stacked on a phone) and a button."),
    Starter("announcement", "Announcement", "Announcement: ", "A coloured band, one message and a call to action."),
    Starter("letter", "Plain letter", "A letter from {{ site_name }}", "Text only, in a serif face, like mail from a person."),
)  # fmt: skip


def get(key):
    return next((s for s in STARTERS if s.key == key), None)


@cache
def _read(key):
    return (_HERE / f"{key}.html").read_text(encoding="utf-8")
