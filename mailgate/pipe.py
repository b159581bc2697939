#!/usr/bin/env python3
"""The gate for an MTA pipe transport, without manage.py:

    /srv/mailsite/.venv/bin/python /srv/mailsite/mailgate/pipe.py --recipient ${recipient} --sender ${sender}

It differs from `manage.py mailgate` in one way that matters to an MTA:
a settings or import error (a typo in .env, a missing package) answers 75 so
the MTA keeps the mail, instead of a traceback and exit 1 (a bounce). It
prints nothing but one-line messages, whatever fails (exit codes:
mailgate.gate.receive).
"""

import argparse
import os
import sys
from pathlib import Path

EX_TEMPFAIL = 75


def main(argv=None):
    parser = argparse.ArgumentParser(description="Route one message from stdin through mailgate.")
    parser.add_argument("--recipient", help="Envelope recipient (default: $RECIPIENT or $LOCAL_PART@$DOMAIN).")
    parser.add_argument("--sender", help="Envelope sender (default: $SENDER; empty = the null sender).")
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return EX_TEMPFAIL  # a wrong pipe command line is the admin's to fix; keep the mail meanwhile
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")
        import django

        django.setup()
        from mailgate.gate import receive as gate
    except Exception as exc:  # settings or imports broken: nothing stored, the MTA retries later
        sys.stderr.write(f"mailgate: temporary failure (configuration): {_line(exc)}\n")
        return EX_TEMPFAIL
    return gate.main(sys.stdin.buffer, sys.stdout, sys.stderr, os.environ, args.recipient, args.sender)


def _line(exc):
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]


def guarded_main(argv=None):
    """main(), and should anything escape it, one line and 75 rather than a traceback and 1 (a bounce)."""
    try:
        return main(argv)
    except Exception as exc:
        sys.stderr.write(f"mailgate: temporary failure: {_line(exc)}\n")
        return EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(guarded_main())
