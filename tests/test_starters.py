"""The starter templates: complete, client-safe HTML documents that compile and carry their way out."""

import pytest

from dbmail.content import rendering, starters
from dbmail.content.recipients import Recipient


@pytest.mark.parametrize("starter", starters.STARTERS, ids=lambda s: s.key)
def test_each_starter_is_a_safe_email_document(starter):
    html = starter.html_body
    assert rendering.template_errors(starter) == {}
    assert '<meta name="color-scheme" content="light dark">' in html
    assert "prefers-color-scheme: dark" in html and 'role="presentation"' in html and "max-width:" in html
    assert "{{ unsubscribe_url }}" in html
    compiled = rendering.CompiledRequest(starter)
    out = compiled.render(compiled.context_for(Recipient(email="ann@example.org", first_name="Ann"), "https://x/u/1/"))
    assert "Ann" in out.html and out.html.count("https://x/u/1/") == 1  # its own link, no second footer
    assert "Unsubscribe (https://x/u/1/)" in out.text  # the text part is made from the HTML
    assert "{{" not in out.text


@pytest.mark.parametrize("starter", starters.STARTERS, ids=lambda s: s.key)
def test_the_public_web_version_of_a_starter_names_no_recipient_and_links_nowhere(starter):
    # Rendered with no recipient, the footers read "You get this newsletter as ." with an empty link.
    from dbmail.panel import preview

    out = preview.public_version(starter)
    assert 'href=""' not in out.html and " as ." not in out.html and " to ." not in out.html
    assert "Unsubscribe" not in out.html and "Unsubscribe" not in out.text


def test_starters_are_found_by_key():
    assert starters.get("newsletter").name == "Newsletter" and starters.get("nope") is None
