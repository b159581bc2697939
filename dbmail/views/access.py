"""Who may use the comm panel: logged-in users who may add message requests."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied

PERMISSION = "dbmail.add_messagerequest"


def panel_view(view):
    """Login required (anonymous visitors go to the login page); without the permission, 403."""

    @wraps(view)
    def checked(request, *args, **kwargs):
        if not (request.user.is_active and request.user.has_perm(PERMISSION)):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return login_required(checked)
