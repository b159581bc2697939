"""Who sees what: a user sees the mail accounts they own (and their folders and messages); staff see all.

Server profiles hold no secrets: every signed-in user may read them (to pick one
for an account); only staff may change them.
"""

from rest_framework import permissions


class StaffWritesProfiles(permissions.BasePermission):
    def has_permission(self, request, view):
        return request.method in permissions.SAFE_METHODS or request.user.is_staff


def visible_accounts(user, queryset):
    return queryset if user.is_staff else queryset.filter(owner=user)


def visible_by_account(user, queryset):
    return queryset if user.is_staff else queryset.filter(account__owner=user)
