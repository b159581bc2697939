"""What a request needs beyond its own fields: a registered recipient set and templates that compile.

MessageRequest.clean() checks what the model knows by itself (a body, an
active sender). These checks need the content modules, and the models import
no logic (so no import cycle runs through them): the forms that edit a
request (the comm panel's, the admin's) are RequestForms, and code that
validates a whole request calls full_clean() here.
"""

from django import forms
from django.core.exceptions import ValidationError

from dbmail.content import recipients, rendering


def request_errors(request):
    """{field: message} for the recipient set and the templates of `request` (empty when both are fine)."""
    errors = {}
    try:
        recipients.get_set(request.recipient_set)
    except recipients.UnknownRecipientSet as exc:
        errors["recipient_set"] = str(exc)
    # Anything else wrong with the parameters shows when the set reads them: expansion then fails the
    # request alone, with the reason (dbmail.intake.expand).
    if request.recipient_params is not None and not isinstance(request.recipient_params, dict):
        errors["recipient_params"] = "The recipient parameters must be a JSON object, e.g. {}."
    if request.context is not None and not isinstance(request.context, dict):
        errors["context"] = "The template variables must be a JSON object, e.g. {}."
    errors.update(rendering.template_errors(request))
    return errors


def full_clean(request):
    """request.full_clean() and request_errors() together: one ValidationError naming every problem."""
    errors = {}
    try:
        request.full_clean()
    except ValidationError as exc:
        errors = exc.update_error_dict(errors)
    content = request_errors(request)
    if content:
        errors = ValidationError(content).update_error_dict(errors)
    if errors:
        raise ValidationError(errors)


class RequestForm(forms.ModelForm):
    """A ModelForm for MessageRequest that also checks its recipient set and templates, like the model's own errors."""

    def _post_clean(self):
        super()._post_clean()  # builds the instance from the form and runs the model's validation
        errors = self.content_errors()
        if errors:
            self._update_errors(ValidationError(errors))

    def content_errors(self):
        """request_errors() of the instance the form built; a form may leave out what it reports itself."""
        return request_errors(self.instance)
