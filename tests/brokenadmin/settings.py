"""The test settings with tests.brokenadmin installed: its ModelAdmin fails the admin's checks."""

from mailsite.test_settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.brokenadmin"]  # noqa: F405
