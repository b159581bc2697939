"""Who a composed request would reach, before it is queued: exact count and warnings.

Walks the recipients once, exactly as expansion will (dbmail.content.recipients), so
the number shown is the number of emails that will be made for deliverable
addresses: inactive users, suppressed addresses and repeats left out.
"""

import re
from dataclasses import dataclass, field

from dbmail.conf import settings as conf
from dbmail.content import recipients, rendering

# `{{ name }}` and `{{ name|filter }}`: the top-level variable a template prints.
_PRINTED = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)([^}]*)")
# A variable printed through one of these has its own words for "empty": no warning is due for it.
_FALLBACK = re.compile(r"\|\s*(default|default_if_none)\s*:")
EXAMPLES = 5


@dataclass
class Summary:
    count: int = 0
    invalid: list = field(default_factory=list)  # addresses that will be dropped, first few
    invalid_count: int = 0
    empty: dict = field(default_factory=dict)  # variable -> {"count": n, "examples": [...]}
    large: bool = False
    error: str = ""  # the recipient set could not list its recipients (count is then 0)

    def as_dict(self):
        return {
            "error": self.error,
            "count": self.count,
            "invalid_count": self.invalid_count,
            "invalid": self.invalid,
            "empty": self.empty,
            "large": self.large,
            "large_threshold": conf.DBMAIL_LARGE_SEND_WARNING,
        }


def printed_variables(*templates):
    """The top-level names printed with {{ }}, in order of first use."""
    return _printed(templates, lambda rest: True)


def unguarded_variables(*templates):
    """The printed names that an empty value would leave blank: printed at least once without a default."""
    return _printed(templates, lambda rest: not _FALLBACK.search(rest))


def _printed(templates, counts):
    names = []
    for template in templates:
        for name, rest in _PRINTED.findall(template or ""):
            if name not in names and counts(rest):
                names.append(name)
    return names


def summarise(request):
    """A Summary for an (unsaved or draft) MessageRequest's recipients and templates."""
    compiled = None
    try:
        compiled = rendering.CompiledRequest(request)
    except rendering.RenderError:
        pass  # template errors are the form's business; the count is still useful
    variables = unguarded_variables(request.subject, request.text_body, request.html_body)
    variables = [v for v in variables if v != "unsubscribe_url"]
    summary = Summary()
    try:
        _walk(request, compiled, variables, summary)
    except (recipients.UnknownRecipientSet, recipients.RecipientSetError) as exc:
        return Summary(error=str(exc))
    summary.large = summary.count > conf.DBMAIL_LARGE_SEND_WARNING
    return summary


def _walk(request, compiled, variables, summary):
    seen = set()
    for _, chunk in recipients.iter_recipients(request.recipient_set, request.recipient_params):
        for rcpt in chunk:
            if rcpt.key in seen:
                continue
            seen.add(rcpt.key)
            if rcpt.error:
                summary.invalid_count += 1
                if len(summary.invalid) < EXAMPLES:
                    summary.invalid.append(rcpt.email or "(empty)")
                continue
            summary.count += 1
            if compiled is None:
                continue
            context = compiled.context_for(rcpt)
            for name in variables:
                if context.get(name) in (None, ""):
                    entry = summary.empty.setdefault(name, {"count": 0, "examples": []})
                    entry["count"] += 1
                    if len(entry["examples"]) < EXAMPLES:
                        entry["examples"].append(rcpt.email)
