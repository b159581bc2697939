"""Who may use the sending API: whoever may use the comm panel (dbmail.intake.grants.may_compose).

A user sees the requests and sends they made; staff see everyone's. Anything
else answers 404, as if it did not exist.
"""

from rest_framework import permissions

from dbmail.intake import grants


class MayCompose(permissions.BasePermission):
    message = "You may not send mail through this site (ask staff for the comm panel's permission)."

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and grants.may_compose(request.user))


def visible_requests(user, queryset):
    return queryset if user.is_staff else queryset.filter(creator=user)


def visible_sends(user, queryset):
    return queryset if user.is_staff else queryset.filter(user=user)
