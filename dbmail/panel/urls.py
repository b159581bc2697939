"""The comm panel, mounted under /commpanel/ by mailsite.urls."""

from django.contrib.auth.views import LogoutView
from django.urls import path

from dbmail.panel.views import compose, dashboard, requests, suppressions, templates

app_name = "commpanel"
urlpatterns = [
    path("", requests.request_list, name="requests"),
    path("dashboard/", dashboard.dashboard, name="dashboard"),
    # Not the admin's: that one only redirects a user who is not staff, leaving them signed in.
    path("logout/", LogoutView.as_view(next_page="admin:login"), name="logout"),
    path("compose/", compose.compose, name="compose"),
    path("compose/count/", compose.count, name="count"),
    path("compose/check/", compose.check, name="check"),
    path("requests/<int:pk>/", requests.request_detail, name="request"),
    path("requests/<int:pk>/edit/", compose.compose, name="edit"),
    path("requests/<int:pk>/count/", compose.count, name="edit_count"),
    path("requests/<int:pk>/emails/<int:email_pk>/", requests.email_detail, name="email"),
    path("requests/<int:pk>/status.json", requests.request_status, name="status"),
    path("requests/<int:pk>/send/", requests.send, name="send"),
    path("requests/<int:pk>/test/", requests.send_test, name="test"),
    path("requests/<int:pk>/reschedule/", requests.reschedule, name="reschedule"),
    path("requests/<int:pk>/cancel/", requests.cancel, name="cancel"),
    path("requests/<int:pk>/retry/", requests.retry, name="retry"),
    path("requests/<int:pk>/resume/", requests.resume, name="resume"),
    path("requests/<int:pk>/reuse/", requests.reuse, name="reuse"),
    path("templates/", templates.template_list, name="templates"),
    path("templates/new/", templates.template_edit, name="template_new"),
    path("templates/<int:pk>/", templates.template_edit, name="template_edit"),
    path("templates/<int:pk>/delete/", templates.template_delete, name="template_delete"),
    path("suppressions/", suppressions.suppression_list, name="suppressions"),
    path("suppressions/export.csv", suppressions.suppression_export, name="suppression_export"),
    path("suppressions/import/", suppressions.suppression_import, name="suppression_import"),
    path("suppressions/<int:pk>/", suppressions.suppression_edit, name="suppression_edit"),
    path("suppressions/<int:pk>/delete/", suppressions.suppression_delete, name="suppression_delete"),
]
