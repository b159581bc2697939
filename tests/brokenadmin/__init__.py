"""An app whose admin.py registers a ModelAdmin that Django's admin checks refuse (tests/test_cron_startup.py).

Installed only by tests/brokenadmin/settings.py, for a `manage.py check` child.
"""
