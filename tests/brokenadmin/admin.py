from django.contrib import admin
from django.contrib.auth.models import Group

# auth's admin.py (earlier in INSTALLED_APPS) registered Group: this one replaces it.
if admin.site.is_registered(Group):
    admin.site.unregister(Group)


@admin.register(Group)
class BrokenGroupAdmin(admin.ModelAdmin):
    list_display = ("no_such_column",)  # admin.E108
