"""Seed 002's paths, mounted at /rest/v1/model/email/ by mailsite.urls: aliases of the /api/v1/ views.

The seed writes its paths without a trailing slash (.../Messages/ID/attachments):
both spellings are served, so its clients need no redirect.
"""

from rest_framework.routers import SimpleRouter

from mailgate.mailboxes.api import seed, views

router = SimpleRouter()
router.trailing_slash = "/?"  # a regex: the slash is optional
router.register("Profiles", views.ProfileViewSet, basename="seed-profile")
router.register("Accounts", views.AccountViewSet, basename="seed-account")
router.register("Folders", seed.SeedFolderViewSet, basename="seed-folder")
router.register("Messages", seed.SeedMessageViewSet, basename="seed-message")

urlpatterns = router.urls
