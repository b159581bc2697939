from django.urls import path

from . import views
from . import webhooks

app_name = "dbmail"
urlpatterns = [
    path("unsubscribe/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("tracking/events/", webhooks.tracking_events, name="tracking-events"),
]
