"""Who may use the comm panel: logged-in users who may add message requests (staff by default)."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied

from dbmail.conf import settings as conf

PERMISSION = "dbmail.add_messagerequest"


def may_use_panel(user):
    """The permission decides; with DBMAIL_PANEL_ALL_STAFF (the default) being staff is enough too."""
    if not user.is_active:
        return False
    return user.has_perm(PERMISSION) or (conf.DBMAIL_PANEL_ALL_STAFF and user.is_staff)


def panel_view(view):
    """Login required (anonymous visitors go to the login page); without the right, 403."""

    @wraps(view)
    def checked(request, *args, **kwargs):
        if not may_use_panel(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return login_required(checked)
