"""Poisoned requests: each kind of error that must fail its own request and nothing else.

`POISONS` maps a name to (MessageRequest fields, words the failure must contain).
The recipient sets below exist only in the test process (a child process
started with manage.py has only the built-in ones).
"""

from dbmail.content.recipients import recipient_set

# Turned off by a test to "fix" the broken sets, so a retry can succeed.
BROKEN = {"on": True}


@recipient_set("test_explodes", label="Raises when called")
def explodes(params):
    if BROKEN["on"]:
        raise RuntimeError("the directory server is offline")
    return [{"email": "fixed@example.net"}]


@recipient_set("test_breaks_midway", label="Raises after 250 rows")
def breaks_midway(params):
    for i in range(400):
        if i == 250 and BROKEN["on"]:
            raise ConnectionResetError("the directory server went away")
        yield {"email": f"mid{i:03d}@example.net"}


POISONS = {
    "bad-params": (
        {"recipient_set": "groups", "recipient_params": {"groups": 5}},
        '"groups" must be a list of group names, not 5',
    ),
    "params-not-an-object": ({"recipient_set": "all_active", "recipient_params": [1, 2]}, "must be a JSON object"),
    "set-gone": ({"recipient_set": "retired_set"}, "No recipient set named 'retired_set'"),
    "set-raises": ({"recipient_set": "test_explodes"}, "RuntimeError: the directory server is offline"),
    "set-raises-midway": ({"recipient_set": "test_breaks_midway"}, "ConnectionResetError: the directory server went"),
    "template-error": ({"text_body": "Hello {% if %}"}, "template error"),
    "bad-context": ({"context": ["not", "a", "mapping"]}, "context must be a JSON object of variables, not list"),
}

# The kinds a child process (manage.py) can also see: no test-only recipient set.
BUILTIN = ["bad-params", "params-not-an-object", "set-gone", "template-error", "bad-context"]
