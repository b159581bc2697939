"""Public pages of the outbox: unsubscribing (RFC 8058 one-click and a confirmation page)."""

from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from dbmail.content.tokens import address_for
from dbmail.models import Suppression


# One-click unsubscribe POSTs come from mail providers without cookies or a CSRF
# token (RFC 8058); the token is what authorises the request (dbmail.content.tokens: both forms).
@csrf_exempt
@require_http_methods(["GET", "POST"])
def unsubscribe(request, token):
    address = address_for(token)
    if address is None:
        return render(request, "dbmail/unsubscribe_invalid.html", status=400)
    if request.method == "POST":
        Suppression.objects.add(address, Suppression.Reason.UNSUBSCRIBED, "unsubscribe link")
        return render(request, "dbmail/unsubscribed.html", {"address": address})
    if Suppression.objects.of(address).exists():
        # A link opened again (or after a bounce stopped the mail): say so rather than ask again.
        return render(request, "dbmail/unsubscribed.html", {"address": address, "already": True})
    return render(request, "dbmail/unsubscribe.html", {"address": address})
