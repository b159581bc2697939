"""CSV parsing for mail merge."""

import csv
import io

import pytest

from dbmail.content import csvmerge


def test_header_names_become_variable_names_and_bom_is_ignored():
    parsed = csvmerge.parse("\ufeffEmail,First Name\nann@Example.ORG,Ann\n".encode())
    assert parsed.columns == ["email", "first_name"]
    assert parsed.rows == [{"email": "ann@example.org", "first_name": "Ann"}]


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_delimiter_comes_from_the_header(delimiter):
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter).writerows([["email", "note"], ["a@example.org", "x, y; z"]])
    text = out.getvalue()
    parsed = csvmerge.parse(text.encode())
    assert parsed.rows == [{"email": "a@example.org", "note": "x, y; z"}] and not parsed.bad


def test_quoted_newlines_keep_line_numbers_honest():
    parsed = csvmerge.parse(b'email,note\na@example.org,"two\nlines"\nbad,1\n')
    assert parsed.bad == [(4, "invalid address 'bad'")]


def test_blank_lines_are_not_rows_and_duplicate_columns_are_refused():
    assert csvmerge.parse(b"email\n\na@example.org\n\n").rows == [{"email": "a@example.org"}]
    with pytest.raises(csvmerge.CSVError, match="same name"):
        csvmerge.parse(b"email,Email\na@example.org,b\n")


def test_report_is_capped():
    bad = [(n, "x") for n in range(60)]
    lines = csvmerge.describe_bad(bad)
    assert len(lines) == csvmerge.MAX_REPORTED + 1 and lines[-1] == "... and 10 more"


def test_a_row_with_a_nul_is_a_bad_row_not_a_database_error():
    parsed = csvmerge.parse(b"email,note\na@example.org,fine\nb@example.org,x\x00y\n")
    assert parsed.rows == [{"email": "a@example.org", "note": "fine"}]
    assert parsed.bad == [(3, "a NUL character")]
