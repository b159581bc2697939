"""Backing off a destination that pushes back: the rules (dbmail.send.buckets keeps the state).

Our sender talks to one relay (the MTA, or an account's own server), not to
the recipients' mail servers, so a provider's "slow down" reaches us as the
answer about one recipient: to RCPT TO, to DATA, or after the message. A 421
there, or any answer with an enhanced status 4.7.x ("421 4.7.0 try again
later", "451 4.7.1 rate limited"), is taken as the recipient's destination
group pushing back. The group is slowed for every host:

- its rate halves (from its configured rate, or from
  DBMAIL_BACKOFF_START_PER_MINUTE for a group without a rate of its own), at
  most once per HALVING_WINDOW however many answers say so, and never below
  DBMAIL_BACKOFF_FLOOR_PER_MINUTE; and nothing more goes to it for
  HALVING_WINDOW (its budget starts again from below empty);
- without pushback it recovers by DBMAIL_BACKOFF_RECOVERY_PERCENT of its
  configured rate each minute (additive increase, multiplicative decrease,
  as TCP does), back to the configured rate (or to no limit).

The default group (every domain no group names) never backs off: it is the
rest of the world, not one provider, and one domain's pushback says nothing
about the others; its 421s stay the relay's (dbmail.send.retry). Name a
domain as a group of its own to have it backed off.

The email that met the pushback is deferred as dbmail.send.retry says (a 421
is not counted as an attempt, a 4.7.x answer to RCPT is); the rest of that
group's claimed mail is given back untried, and other groups go on at full speed.
"""

import re
from datetime import timedelta

from dbmail.conf import settings as conf

PUSHBACK_STAGES = ("rcpt", "data", "message")
HALVING_WINDOW = timedelta(seconds=30)  # answers to one burst of mail halve the rate once
_ENHANCED_4_7 = re.compile(r"(?<![\d.])4\.7\.\d{1,3}(?![\d.])")


def is_pushback(outcome):
    """Whether an attempt's outcome is a destination asking us to slow down."""
    if outcome.stage not in PUSHBACK_STAGES or not outcome.code or not 400 <= outcome.code < 500:
        return False
    return outcome.code == 421 or bool(_ENHANCED_4_7.search(outcome.text or ""))


def target(configured_per_minute):
    """The rate a slowed group recovers to: its own, or the start rate of a group without one."""
    return configured_per_minute or conf.DBMAIL_BACKOFF_START_PER_MINUTE


def effective_rate(bucket, now):
    """A group's rate per minute at `now`, after back-off and recovery (0: no limit)."""
    if bucket.slowed_per_minute is None or bucket.last_pushback_at is None:
        return bucket.configured_per_minute
    goal = target(bucket.configured_per_minute)
    minutes = max(0.0, (now - bucket.last_pushback_at).total_seconds() / 60)
    rate = bucket.slowed_per_minute + goal * conf.DBMAIL_BACKOFF_RECOVERY_PERCENT / 100 * minutes
    return bucket.configured_per_minute if rate >= goal else rate


def is_slowed(bucket, now):
    return bucket.slowed_per_minute is not None and effective_rate(bucket, now) != bucket.configured_per_minute


def recovered_at(bucket, now):
    """When a slowed group is back at its rate, if nothing pushes back meanwhile."""
    goal = target(bucket.configured_per_minute)
    per_minute = goal * conf.DBMAIL_BACKOFF_RECOVERY_PERCENT / 100
    rate = effective_rate(bucket, now) or goal
    return now + timedelta(minutes=max(0.0, goal - rate) / per_minute)


def push_back(bucket, text, now):
    """Apply one pushback to a locked bucket (in memory; the caller saves it). Returns True if it halved."""
    rate = effective_rate(bucket, now) if is_slowed(bucket, now) else bucket.configured_per_minute
    if not is_slowed(bucket, now):
        bucket.slowed_since, bucket.pushbacks, bucket.last_halved_at = now, 0, None
    halve = bucket.last_halved_at is None or now - bucket.last_halved_at >= HALVING_WINDOW
    if halve:
        rate = max(conf.DBMAIL_BACKOFF_FLOOR_PER_MINUTE, (rate or target(bucket.configured_per_minute)) / 2)
        bucket.last_halved_at = now
        # A pause first ("try again later"): the budget refills from below zero for the whole window.
        bucket.tokens, bucket.refilled_at = -rate / 60 * HALVING_WINDOW.total_seconds(), now
    # Recovery starts again from here: from the rate now in force.
    bucket.slowed_per_minute = rate
    bucket.last_pushback_at = now
    bucket.pushbacks += 1
    bucket.pushback_text = (text or "")[:500]
    return halve
