"""CSV upload for mail merge: a header row, an `email` column, every column a template variable.

Bad rows are reported with their line number, never silently dropped; the
caller decides whether to refuse the file or leave those rows out knowingly.
"""

import csv
import io
import re
from dataclasses import dataclass, field

from dbmail.content import recipients
from dbmail.exceptions import CSVError

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_REPORTED = 50


@dataclass
class Parsed:
    rows: list = field(default_factory=list)
    bad: list = field(default_factory=list)  # (line number, message)
    columns: list = field(default_factory=list)


def column_name(header):
    return re.sub(r"[\s\-.]+", "_", header.strip().lower())


def parse(data):
    """Parse uploaded bytes; raise CSVError for an unusable file, report bad rows in `bad`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CSVError("The file is not UTF-8 text. Save it as “CSV UTF-8” and upload it again.") from None
    if not text.strip():
        raise CSVError("The file is empty.")
    # The header decides the delimiter (spreadsheets in some locales write ";"); bad rows must not sway it.
    first_line = text.lstrip("\r\n").splitlines()[0]
    delimiter = max(",;\t", key=first_line.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, [])
    columns = [column_name(h) for h in header]
    bad_names = [h for h, c in zip(header, columns, strict=True) if not _NAME.match(c)]
    if bad_names:
        raise CSVError(
            "These column names cannot be template variables (use letters, digits and _): "
            + ", ".join(repr(h) for h in bad_names)
        )
    if "email" not in columns:
        raise CSVError("The first row must name the columns, and one of them must be “email”.")
    if len(set(columns)) != len(columns):
        raise CSVError("Two columns have the same name.")

    parsed = Parsed(columns=columns)
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank lines are not rows
        if len(cells) != len(columns):
            parsed.bad.append((line, f"{len(cells)} fields where the header has {len(columns)}"))
            continue
        if any("\x00" in c for c in cells):  # the csv module reads NULs; the database cannot store them
            parsed.bad.append((line, "a NUL character"))
            continue
        row = {c: v.strip() for c, v in zip(columns, cells, strict=True)}
        row["email"] = recipients.normalise_address(row["email"])
        if not row["email"]:
            parsed.bad.append((line, "no email address"))
            continue
        error = recipients.address_error(row["email"])
        if error:
            parsed.bad.append((line, error))
            continue
        parsed.rows.append(row)
    return parsed


def describe_bad(bad):
    """Human lines for the bad rows, the first MAX_REPORTED of them."""
    lines = [f"line {line}: {message}" for line, message in bad[:MAX_REPORTED]]
    if len(bad) > MAX_REPORTED:
        lines.append(f"... and {len(bad) - MAX_REPORTED} more")
    return lines
