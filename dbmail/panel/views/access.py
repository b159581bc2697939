"""Who may use the comm panel: logged-in users who may add message requests (staff by default)."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme

from dbmail.conf import settings as conf
from dbmail.intake import grants

# The rule is the sending API's too, so it lives with the other "who may send" rules.
PERMISSION = grants.COMPOSE_PERMISSION
may_use_panel = grants.may_compose


def panel_view(view):
    """Login required (anonymous visitors go to the login page); without the right, a 403 page that says why."""

    @wraps(view)
    def checked(request, *args, **kwargs):
        if not may_use_panel(request.user):
            return forbidden(request)
        return view(request, *args, **kwargs)

    return login_required(checked)


def forbidden(request):
    """403 in words, with the ways out: sign in as someone else, or go back."""
    back = request.META.get("HTTP_REFERER", "")
    if not url_has_allowed_host_and_scheme(back, {request.get_host()}, require_https=request.is_secure()):
        back = ""
    context = {
        "back": back if back != request.build_absolute_uri() else "",
        "all_staff": conf.DBMAIL_PANEL_ALL_STAFF,
    }
    return render(request, "commpanel/forbidden.html", context, status=403)
