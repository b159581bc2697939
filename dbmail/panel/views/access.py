"""Who may use the comm panel: logged-in users who may add message requests (staff by default)."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied

from dbmail.intake import grants

# The rule is the sending API's too, so it lives with the other "who may send" rules.
PERMISSION = grants.COMPOSE_PERMISSION
may_use_panel = grants.may_compose


def panel_view(view):
    """Login required (anonymous visitors go to the login page); without the right, 403."""

    @wraps(view)
    def checked(request, *args, **kwargs):
        if not may_use_panel(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return login_required(checked)
