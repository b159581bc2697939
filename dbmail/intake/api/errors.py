"""The site's DRF exception handler: a body over Django's size limit is a 413 in JSON, not an error page.

Django refuses a request body larger than DATA_UPLOAD_MAX_MEMORY_SIZE by
raising RequestDataTooBig when the body is read, which DRF does not know
and lets through. mailsite's REST_FRAMEWORK setting makes this the handler
of every API of the site.
"""

from django.core.exceptions import RequestDataTooBig
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": "The request body is too large (DATA_UPLOAD_MAX_MEMORY_SIZE); send attachments as files."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    return drf_exception_handler(exc, context)
