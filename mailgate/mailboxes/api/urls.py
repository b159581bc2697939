from django.urls import include, path
from rest_framework.routers import DefaultRouter

from mailgate.mailboxes.api import views

router = DefaultRouter()
router.register("profiles", views.ProfileViewSet, basename="mailbox-profile")
router.register("accounts", views.AccountViewSet, basename="mailbox-account")
router.register("folders", views.FolderViewSet, basename="mailbox-folder")
router.register("messages", views.MessageViewSet, basename="mailbox-message")
router.register("grants", views.GrantViewSet, basename="send-grant")

urlpatterns = [
    path("schema/", views.SchemaView.as_view(), name="api-schema"),
    path("token/", views.TokenView.as_view(), name="api-token"),
    path("", include(router.urls)),
]
