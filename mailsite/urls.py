from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("commpanel/", include("dbmail.commpanel_urls")),
    path("", include("dbmail.urls")),
]
