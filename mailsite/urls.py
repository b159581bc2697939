from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from dbmail.conf import settings as conf

# Every app's admin pages, before admin.site.urls lists them: they are not imported at start-up
# (mailsite/adminconfig.py).
admin.autodiscover()

# The sign-in page is the comm panel's too: it names the site, not "Django administration".
admin.site.site_header = conf.DBMAIL_SITE_NAME
admin.site.site_title = f"{conf.DBMAIL_SITE_NAME} administration"
admin.site.index_title = "Administration"

urlpatterns = [
    # The site has no page of its own at /: README's address and the admin's "View site" lead to the panel.
    path("", RedirectView.as_view(pattern_name="commpanel:requests"), name="home"),
    # Browsers ask for /favicon.ico on every page, the admin's too; a 404 each time only fills the log.
    path("favicon.ico", RedirectView.as_view(url=static("dbmail/favicon.svg"), permanent=True)),
    path("admin/", admin.site.urls),
    path("commpanel/", include("dbmail.panel.urls")),
    path("api/v1/", include("dbmail.intake.api.urls")),  # sending: requests and transactional mail (dbmail)
    path("api/v1/", include("mailgate.mailboxes.api.urls")),  # mailboxes and messages (mailgate)
    path("rest/v1/model/email/", include("mailgate.mailboxes.api.seed_urls")),  # seed 002's paths for the same
    path("", include("dbmail.urls")),
]
