from django.contrib import admin
from django.urls import include, path

from dbmail.conf import settings as conf

# The sign-in page is the comm panel's too: it names the site, not "Django administration".
admin.site.site_header = conf.DBMAIL_SITE_NAME
admin.site.site_title = f"{conf.DBMAIL_SITE_NAME} administration"
admin.site.index_title = "Administration"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("commpanel/", include("dbmail.panel.urls")),
    path("api/v1/", include("dbmail.intake.api.urls")),  # sending: requests and transactional mail (dbmail)
    path("api/v1/", include("mailgate.mailboxes.api.urls")),  # mailboxes and messages (mailgate)
    path("rest/v1/model/email/", include("mailgate.mailboxes.api.seed_urls")),  # seed 002's paths for the same
    path("", include("dbmail.urls")),
]
