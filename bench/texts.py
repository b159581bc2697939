"""The messages every phase sends, dbmail's and the peers' alike."""

SENDER = "office@example.org"

SUBJECT = "News from {{ site_name }} for {{ first_name }}"
# About the size of a real newsletter's text part (~1.5 kB), with a few per-recipient variables.
TEXT_BODY = (
    "Dear {{ name }},\n\n"
    + "This is the monthly letter of {{ site_name }}. " * 4
    + "\n\n"
    + "The timetable for the coming term is now online, and the library keeps its longer opening hours "
    "until the end of the month. Please bring back any books you borrowed before the holidays. "
    * 6
    + "\n\nYour account: {{ username }} ({{ email }})\n"
    "To stop receiving these letters: {{ unsubscribe_url }}\n"
)

# One transactional email (a password reset): the per-call enqueue figures send this, already rendered.
RESET_SUBJECT = "Your password"
RESET_TEXT = (
    "Hello,\n\nsomeone asked to reset the password of your account. If it was you, follow this link "
    "within the next hour:\n\n    https://example.org/accounts/reset/{n}/\n\nIf it was not you, ignore "
    "this message: your password stays as it is.\n\n-- \nThe Office\n"
)
