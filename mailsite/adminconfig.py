"""django.contrib.admin with its pages' modules imported when they are first needed, not at start-up.

Django's own AdminConfig imports every app's admin.py as it starts
(autodiscovery): here that is the site's forms, filters and actions, about
a tenth of the start-up of a process that never shows an admin page
(dbmail_cron runs every minute on every host; docs/scaling.md, "Start-up").
The pages are registered instead by the two things that use them:

- the URL patterns (mailsite/urls.py calls admin.autodiscover() before it
  takes admin.site.urls), so every request, reverse() and test client sees
  them all;
- the admin's system check (below), so `manage.py check` and
  `check --deploy` still check every registered ModelAdmin, whatever order
  the checks run in and whether or not the URL patterns are checked too
  (tests/test_cron_startup.py).
"""

from django.contrib.admin import autodiscover
from django.contrib.admin.apps import SimpleAdminConfig
from django.contrib.admin.checks import check_admin_app, check_dependencies
from django.core import checks


class AdminConfig(SimpleAdminConfig):
    def ready(self):
        # SimpleAdminConfig.ready's two checks, the second one discovering the pages first.
        checks.register(check_dependencies, checks.Tags.admin)
        checks.register(check_discovered_admin_app, checks.Tags.admin)


def check_discovered_admin_app(app_configs=None, **kwargs):
    """Django's check of every admin site's ModelAdmins, once every app's admin.py is imported."""
    autodiscover()
    return check_admin_app(app_configs, **kwargs)
