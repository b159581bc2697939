from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("commpanel/", include("dbmail.commpanel_urls")),
    path("api/v1/", include("mailgate.api.urls")),  # mailboxes and messages (mailgate)
    path("", include("dbmail.urls")),
]
