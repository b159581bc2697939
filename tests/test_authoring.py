"""Rich text and Markdown become a clean HTML body that is still a template."""

from dbmail.content import authoring
from dbmail.models import BodyFormat


def test_markdown_keeps_template_syntax_as_written():
    html = authoring.markdown_to_html(
        '# Hi {{ first_name }}\n\nDear {{ first_name|default:"friend" }} and {{ last_name }}, '
        "[unsubscribe]({{ unsubscribe_url }}).\n\n{% if vip %}\n\nYou are *VIP*.\n\n{% endif %}\n"
    )
    assert "<h1>Hi {{ first_name }}</h1>" in html
    assert 'Dear {{ first_name|default:"friend" }} and {{ last_name }}' in html  # no emphasis from the underscores
    assert '<a href="{{ unsubscribe_url }}" rel="noopener noreferrer">unsubscribe</a>' in html
    assert "<p>{% if vip %}</p>" not in html and "{% if vip %}\n<p>You are <em>VIP</em>.</p>\n{% endif %}" in html


def test_markdown_and_rich_text_are_sanitised():
    dirty = (
        '<p onclick="x()">Hi</p><script>alert(1)</script><a href="javascript:alert(1)">x</a><iframe src="//e"></iframe>'
    )
    for html in (authoring.markdown_to_html(dirty), authoring.clean(dirty)):
        assert "script" not in html and "onclick" not in html and "javascript:" not in html and "iframe" not in html
        assert "Hi" in html
    assert authoring.clean('<p>A <strong>b</strong> <a href="https://e.org/">c</a></p><ol><li>d</li></ol>') == (
        '<p>A <strong>b</strong> <a href="https://e.org/" rel="noopener noreferrer">c</a></p><ol><li>d</li></ol>'
    )


def test_the_body_stored_depends_on_the_format():
    assert (
        authoring.html_body(BodyFormat.HTML, "", "<script>kept</script>") == "<script>kept</script>"
    )  # the author's own
    assert authoring.html_body(BodyFormat.RICH, "", "<p>x</p><script>y</script>") == "<p>x</p>"
    assert authoring.html_body(BodyFormat.MARKDOWN, "**x**", "ignored") == "<p><strong>x</strong></p>"
    assert authoring.html_body(BodyFormat.MARKDOWN, "  ", "ignored") == ""
