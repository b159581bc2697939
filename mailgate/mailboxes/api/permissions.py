"""Who sees what: a user sees the mail accounts they own (and their folders and messages); so does everyone
holding the admin's permission on them, and only they see (view) or change (change) everyone's.

Staff status alone grants nothing here, as in the admin: a staff member given no permission
reads no one else's mail. Server profiles hold no secrets: every signed-in user may read them
(to pick one for an account); only holders of the admin's add, change or delete permission on
profiles write them.
"""

from rest_framework import permissions

WRITES = {"POST": "add", "PUT": "change", "PATCH": "change", "DELETE": "delete"}


class StaffWritesProfiles(permissions.BasePermission):
    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            return True
        return request.user.has_perm(f"mailgate.{WRITES.get(request.method, 'change')}_mailserverprofile")


def may_see_everyones(request, model_name):
    """Whether this request may read (GET) or, for any other method, change every user's `model_name` rows."""
    action = "view" if request.method in permissions.SAFE_METHODS else "change"
    return request.user.has_perm(f"mailgate.{action}_{model_name}")


def may_use_account(request, account, model_name):
    """Whether a new or changed `model_name` row may belong to `account`: one's own, or with the change permission."""
    return account.owner_id == request.user.pk or request.user.has_perm(f"mailgate.change_{model_name}")


def visible_accounts(request, queryset):
    return queryset if may_see_everyones(request, "mailaccount") else queryset.filter(owner=request.user)


def visible_by_account(request, queryset, model_name):
    return queryset if may_see_everyones(request, model_name) else queryset.filter(account__owner=request.user)
