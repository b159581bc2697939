"""The sending API's routes, mounted under /api/v1/ by mailsite.urls (beside mailgate's mailboxes API)."""

from rest_framework.routers import SimpleRouter

from dbmail.intake.api import views

# SimpleRouter: no API root view of its own, which would shadow the mailboxes API's at /api/v1/.
router = SimpleRouter()
router.register("requests", views.RequestViewSet, basename="api-request")
router.register("send", views.SendViewSet, basename="api-send")

urlpatterns = router.urls
