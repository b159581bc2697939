from django.urls import path

from dbmail.panel.views import unsubscribe_page as unsubscribe
from dbmail.panel.views import web_version as public
from dbmail.track import webhooks

app_name = "dbmail"
urlpatterns = [
    path("unsubscribe/<str:token>/", unsubscribe.unsubscribe, name="unsubscribe"),
    path("mail/<str:public_id>/", public.web_version, name="web_version"),
    path("tracking/events/", webhooks.tracking_events, name="tracking-events"),
    path("tracking/events/<slug:mapping>/", webhooks.tracking_events, name="tracking-events-mapped"),
]
