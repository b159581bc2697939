"""The house layout for rich-text and Markdown bodies, and the unsubscribe footer every body carries.

The layout is what the major clients agree on: one centred table at most 600
px wide (fluid below that, for phones), inline styles with explicit text and
background colours on every cell (so a client's dark mode may invert them but
cannot leave dark text on a dark background), and `color-scheme` metadata
saying both schemes are supported, plus a prefers-color-scheme block for the
clients that honour it.

The footer: a body that does not use {{ unsubscribe_url }} gets the link
added after rendering (before </body> in a full HTML document, else at the
end), in the HTML part as in the text part, so no request mail goes out
without its way out. Not when there is no link to give (the public web
version).
"""

from django.utils.html import escape

LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="supported-color-schemes" content="light dark">
<style>
  body { margin: 0; padding: 0; }
  a { color: #0b5cad; }
  @media (prefers-color-scheme: dark) {
    .mail-bg { background-color: #16181d !important; }
    .mail-card { background-color: #22262e !important; color: #e6e8eb !important; }
    .mail-card a { color: #8ab4f8 !important; }
    .mail-foot { color: #a4abb6 !important; }
  }
  @media (max-width: 620px) { .mail-card { padding: 20px 16px !important; } }
</style>
</head>
<body style="margin:0;padding:0;background-color:#f2f4f7;">
<table role="presentation" class="mail-bg" width="100%" cellpadding="0" cellspacing="0" border="0" style="background-color:#f2f4f7;">
<tr><td align="center" style="padding:24px 8px;">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" style="max-width:600px;">
<tr><td class="mail-card" style="background-color:#ffffff;color:#1f2328;padding:32px 36px;border-radius:8px;font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;font-size:16px;line-height:1.5;">
{body}
</td></tr>
</table>
</td></tr>
</table>
</body>
</html>
"""

FOOTER_HTML = (
    '<p class="mail-foot" style="margin:24px 0 0;font-size:13px;line-height:1.4;color:#656d76;'
    'font-family:Helvetica,Arial,sans-serif;text-align:center;">'
    'No longer want these emails? <a href="{url}" style="color:#656d76;">Unsubscribe</a>.</p>'
)
FOOTER_TEXT = "\n\n--\nNo longer want these emails? Unsubscribe: {url}\n"


def wrap(fragment):
    """A body fragment (from the rich-text editor or Markdown) as a whole email document."""
    return LAYOUT.replace("{body}", fragment)


def needs_footer(template_source):
    return bool(template_source) and "unsubscribe_url" not in template_source


def add_html_footer(html, url):
    footer = FOOTER_HTML.format(url=escape(url))
    end = html.lower().rfind("</body>")
    if end == -1:
        return html + footer
    return html[:end] + footer + html[end:]


def add_text_footer(text, url):
    return text.rstrip("\n") + FOOTER_TEXT.format(url=url)
