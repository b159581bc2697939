"""The suppression list as CSV: exported whole (or filtered), imported from another tool's list.

Export columns: address, reason, note, created_at (ISO 8601). Import: a header
row naming an address column (`address`, `email` or `email_address`, any
case; Mailchimp's "Email Address" too); `reason` and `note` columns are
optional, and a missing or unknown reason takes the one chosen on the form.
Each address is stored as its mailbox's key (dbmail.content.addresses.mailbox_key:
Anna <anna@Bücher.example.> is anna@xn--bcher-kva.example). Addresses already on
the list, in whatever spelling, are left as they are (their reason and date are
history); bad rows are reported with their line numbers and skipped, and the
good rows go in all the same, in one transaction.
"""

import csv
import io
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from dbmail.content import csvmerge, recipients
from dbmail.content.addresses import mailbox_key
from dbmail.exceptions import CSVError
from dbmail.models import Suppression

COLUMNS = ["address", "reason", "note", "created_at"]
ADDRESS_COLUMNS = ("address", "email", "email_address", "e_mail")


@dataclass
class ImportResult:
    added: int = 0
    already: int = 0
    addresses: list = field(default_factory=list)  # the addresses added
    bad: list = field(default_factory=list)  # (line number, message)


def export_rows(rows):
    """Lines of CSV text (header first) for a queryset of Suppression rows, streamed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values):
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(COLUMNS)
    for row in rows.values_list("address", "reason", "note", "created_at").iterator(chunk_size=2000):
        address, reason, note, created_at = row
        yield line([address, reason, note, created_at.isoformat()])


def import_csv(data, default_reason=Suppression.Reason.MANUAL, note=""):
    """Add the addresses in CSV bytes `data`; returns an ImportResult. Raises CSVError for an unusable file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CSVError("The file is not UTF-8 text. Save it as “CSV UTF-8” and upload it again.") from None
    if not text.strip():
        raise CSVError("The file is empty.")
    first_line = text.lstrip("\r\n").splitlines()[0]
    reader = csv.reader(io.StringIO(text), delimiter=max(",;\t", key=first_line.count))
    columns = [csvmerge.column_name(h) for h in next(reader, [])]
    where = next((columns.index(c) for c in ADDRESS_COLUMNS if c in columns), None)
    if where is None:
        raise CSVError("The first row must name the columns, one of them “address” or “email”.")
    reason_at = columns.index("reason") if "reason" in columns else None
    note_at = columns.index("note") if "note" in columns else None

    result = ImportResult()
    wanted = {}
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        line = reader.line_num
        if len(cells) <= where:
            result.bad.append((line, "no address"))
            continue
        written = cells[where].strip()
        # Stored as the mailbox's key (dbmail.content.addresses), which is what is checked: a spelling
        # that only the key makes valid (a trailing dot, a display name) is taken as that mailbox.
        address = mailbox_key(written)
        error = recipients.address_error(address) if address else "no address"
        if error and written != address:
            error = recipients.address_error(written) or error  # in the words of what the file says
        if error:
            result.bad.append((line, error))
            continue
        reason = _cell(cells, reason_at).lower()
        wanted.setdefault(
            address,
            Suppression(
                address=address,
                reason=reason if reason in Suppression.Reason.values else default_reason,
                note=(_cell(cells, note_at) or note)[:500],
                created_at=timezone.now(),
            ),
        )
    with transaction.atomic():
        known = set(Suppression.objects.filter(address__in=list(wanted)).values_list("address", flat=True))
        new = [row for address, row in wanted.items() if address not in known]
        Suppression.objects.bulk_create(new, batch_size=1000, ignore_conflicts=True)
    result.added, result.already = len(new), len(known)
    result.addresses = [row.address for row in new]
    return result


def _cell(cells, index):
    return cells[index].strip() if index is not None and index < len(cells) else ""
