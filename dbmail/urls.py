from django.urls import path

from . import webhooks
from .views import public, unsubscribe

app_name = "dbmail"
urlpatterns = [
    path("unsubscribe/<str:token>/", unsubscribe.unsubscribe, name="unsubscribe"),
    path("mail/<uuid:public_id>/", public.web_version, name="web_version"),
    path("tracking/events/", webhooks.tracking_events, name="tracking-events"),
]
