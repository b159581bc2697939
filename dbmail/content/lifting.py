"""Who may lift a suppression (let mail go to the address again): the rule of docs/admins.md, in one place.

A hard bounce, a complaint or an unsubscribe was put on the list by the address's own mail
server or person: mailing it again hurts the sender's reputation or breaks a promise, so
lifting one takes the admin's permission *Can delete suppression* (superusers have it), in
the comm panel as in the admin. A block added by hand (*manual*) any comm panel user may
lift, as they may add one; in the admin, deleting any row takes that permission (Django's own).

Lifting is not only deleting the row: changing its address (the old one would get mail
again) or its reason (an unsubscribe stops less than a bounce; a manual row anyone may
remove) lifts it too, so those two fields of a protected row are for the same holders only.
"""

from dbmail.models import Suppression

PERMISSION = "dbmail.delete_suppression"
PROTECTED = (Suppression.Reason.BOUNCED, Suppression.Reason.COMPLAINED, Suppression.Reason.UNSUBSCRIBED)
# The fields whose change lifts a protected row.
LIFTING_FIELDS = ("address", "reason")


def is_protected(row):
    return row.pk is not None and row.reason in PROTECTED


def may_lift(user, row):
    return not is_protected(row) or bool(user and user.has_perm(PERMISSION))


def refusal(row):
    """Why this user may not lift `row`, in words."""
    cause = {
        Suppression.Reason.BOUNCED: "a hard bounce",
        Suppression.Reason.COMPLAINED: "a spam complaint",
        Suppression.Reason.UNSUBSCRIBED: "an unsubscribe",
    }.get(row.reason, row.reason)
    return (
        f"{row.address} is suppressed by {cause}: only an admin with the permission “Can delete suppression” "
        "may lift it (remove it, or change its address or reason)."
    )
