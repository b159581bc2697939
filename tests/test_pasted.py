"""Pasted addresses: lines, commas, semicolons and spaces; names before addresses; bad entries by line."""

import pytest

from dbmail.content import pasted


@pytest.mark.parametrize(
    "text, emails",
    [
        ("a@x.org b@x.org", ["a@x.org", "b@x.org"]),
        ("a@x.org,b@x.org;c@x.org\nd@x.org", ["a@x.org", "b@x.org", "c@x.org", "d@x.org"]),
        ("  a@X.ORG  \n\n\n", ["a@x.org"]),
        ("Bob Smith <bob@x.org>, ann@x.org", ["bob@x.org", "ann@x.org"]),
        ('"Smith, Bob" <bob@x.org>; Eve\teve@x.org', ["bob@x.org", "eve@x.org"]),
    ],
)
def test_every_separator_splits(text, emails):
    parsed = pasted.parse(text)
    assert [r["email"] for r in parsed.rows] == emails and parsed.bad == []


def test_names_come_from_the_words_before_an_address():
    rows = pasted.parse('"Smith, Bob" <bob@x.org>\nEve Adams\teve@x.org\nAnn ann@x.org Cal cal@x.org').rows
    assert rows == [
        {"email": "bob@x.org", "name": "Smith, Bob"},
        {"email": "eve@x.org", "name": "Eve Adams"},
        {"email": "ann@x.org", "name": "Ann"},
        {"email": "cal@x.org", "name": "Cal"},
    ]


def test_bad_entries_are_listed_by_line_and_the_good_ones_kept():
    parsed = pasted.parse("ann@x.org\nfoo@\n@example.org\nbob@x.org just a name\n")
    assert [r["email"] for r in parsed.rows] == ["ann@x.org", "bob@x.org"]
    assert parsed.bad == [
        (2, "invalid address 'foo@'"),
        (3, "invalid address '@example.org'"),
        (4, "not an email address: 'just a name'"),
    ]


def test_five_thousand_lines_with_two_bad():
    lines = [f"p{i}@example.org" for i in range(5000)]
    lines[10], lines[4999] = "p10@", "nobody"
    parsed = pasted.parse("\n".join(lines))
    assert len(parsed.rows) == 4998 and [n for n, _ in parsed.bad] == [11, 5000]
