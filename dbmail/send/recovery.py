"""What a sender held when its database connection broke, and giving it back once the database answers.

A sender holds two things the database must hear about: outcomes handed to
its database thread and not yet committed (those messages were sent: their
outcome must be written, or they would be sent again), and claimed rows it
had not tried yet (they must go back to queued or deferred, with their
next_attempt_at unchanged, rather than wait for the lease to run out).
"""

from dataclasses import dataclass, field

from django.db import Error as DjangoDatabaseError
from django.db import connection

from dbmail.exceptions import DatabaseLost
from dbmail.models import TextOfEmail
from dbmail.send import outcomes

try:  # raw psycopg2 cursors (the expansion's mogrify) raise psycopg2's own errors
    from psycopg2 import Error as _DriverError
except ImportError:  # pragma: no cover - SQLite-only installs
    _DriverError = DjangoDatabaseError

DATABASE_ERRORS = (DjangoDatabaseError, _DriverError)
__all__ = ["DATABASE_ERRORS", "DatabaseLost", "Leftovers"]


@dataclass
class Leftovers:
    rows: list = field(default_factory=list)  # outcomes.Row not committed
    claims: list = field(default_factory=list)  # claims.Claim with rows not tried

    def __bool__(self):
        return bool(self.rows or any(c.open_ids for c in self.claims))

    def __len__(self):
        return len(self.rows) + sum(len(c.open_ids) for c in self.claims)

    def add(self, other):
        self.rows.extend(other.rows)
        self.claims.extend(other.claims)

    def give_back(self):
        """Write the outcomes, then release the claims; raises a database error if it still cannot."""
        if not connection.in_atomic_block:
            try:
                connection.close()  # the broken connection: the next query opens a new one
            except DATABASE_ERRORS:
                pass
        if self.rows:
            # A commit whose answer was lost did happen: only rows still under their claim are written.
            tokens = {row.token for row in self.rows}
            held = set(
                TextOfEmail.objects.filter(pk__in=[r.pk for r in self.rows], claim_token__in=tokens).values_list(
                    "pk", flat=True
                )
            )
            outcomes.write([row for row in self.rows if row.pk in held])
            self.rows.clear()
        while self.claims:
            self.claims[0].release()
            self.claims.pop(0)
