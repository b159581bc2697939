"""dbmail.states: the transition table is whole and consistent, and nothing writes a status around it."""

import ast
import re
from collections import Counter
from pathlib import Path

from dbmail import states
from dbmail.models import MessageRequest, TextOfEmail

E, R = states.EmailStatus, states.RequestStatus
ROOT = Path(__file__).resolve().parent.parent


def reachable(transitions):
    """Every state reachable from creation along `transitions`."""
    seen = {t.target for t in transitions if not t.sources}
    while True:
        more = {t.target for t in transitions if seen & set(t.sources)} - seen
        if not more:
            return seen
        seen |= more


# --- The table ---


def test_every_transition_names_states_of_its_own_kind():
    for kind, transitions in ((E, states.EMAIL_TRANSITIONS), (R, states.REQUEST_TRANSITIONS)):
        for t in transitions:
            assert isinstance(t.target, kind), t
            assert all(isinstance(s, kind) for s in t.sources), t
            assert len(set(t.sources)) == len(t.sources), t
    names = [t.name for t in (*states.EMAIL_TRANSITIONS, *states.REQUEST_TRANSITIONS)]
    assert len(names) == len(set(names))


def test_every_state_is_reachable_from_creation():
    assert reachable(states.EMAIL_TRANSITIONS) == set(E)
    assert reachable(states.REQUEST_TRANSITIONS) == set(R)
    # ...and every state but the final ones leads somewhere.
    for kind, transitions in ((E, states.EMAIL_TRANSITIONS), (R, states.REQUEST_TRANSITIONS)):
        leaving = {s for t in transitions for s in t.sources if s != t.target}
        assert set(kind) - leaving <= {E.COMPLAINED, R.CANCELLED}


def test_only_takeovers_and_reschedules_stay_where_they_are():
    staying = {t for t in (*states.EMAIL_TRANSITIONS, *states.REQUEST_TRANSITIONS) if t.target in t.sources}
    # A sender taking over a dead sender's claim, an expander taking over a dead expander's
    # lease, the admin's "send now" moving a queued request's time: nothing else loops.
    assert staying == {states.CLAIM, states.START_EXPANSION, states.SEND_NOW}


def test_final_states_are_left_only_by_tracking_precedence_or_a_retried_drop():
    for t in states.EMAIL_TRANSITIONS:
        leaving = set(t.sources) & set(states.FINAL)
        if not leaving:
            continue
        if t in states.TRACKING:
            assert all(states.TRACKING_RANK[s] < states.TRACKING_RANK[t.target] for s in leaving), t
        else:
            assert t is states.RETRY and leaving == {E.DROPPED}, t


def test_tracking_moves_only_upwards_and_from_every_lower_state():
    for t in states.TRACKING:
        rank = states.TRACKING_RANK[t.target]
        assert set(t.sources) == {s for s in E if states.TRACKING_RANK[s] < rank}
    assert set(states.TRACKING_RANK) == set(E)
    # The top of the ladder is final for good: nothing outranks a complaint.
    assert not any(E.COMPLAINED in t.sources for t in states.EMAIL_TRANSITIONS)


def test_sending_is_entered_by_a_claim_and_left_by_an_outcome_a_release_or_tracking():
    into = {t for t in states.EMAIL_TRANSITIONS if t.target == E.SENDING}
    assert into == {states.CLAIM, states.CLAIM_NOW}
    out = {t for t in states.EMAIL_TRANSITIONS if E.SENDING in t.sources and t.target != E.SENDING}
    assert out == {*states.OUTCOMES.values(), *states.RELEASE.values(), *states.TRACKING}
    assert set(states.OUTCOMES) == {E.SENT, E.DEFERRED, E.DROPPED}
    assert set(states.RELEASE) == set(states.WAITING)


def test_the_groups_partition_what_they_should():
    every = set(E)
    assert set(states.UNFINISHED) == set(states.WAITING) | {E.SENDING}
    assert set(states.UNFINISHED) | set(states.FINAL) == every
    assert not set(states.UNFINISHED) & set(states.FINAL)
    for one, other in ((states.ACCEPTED, states.NEVER_SENT), (states.SUCCEEDED, states.FAILED)):
        assert set(one) | set(other) == set(states.FINAL) and not set(one) & set(other)
    # What only tracking leads to.
    others = {t.target for t in states.EMAIL_TRANSITIONS if t not in states.TRACKING}
    assert set(states.TRACKED) == {t.target for t in states.TRACKING} - others
    assert set(states.KEEPS_DIAGNOSTIC) <= {t.target for t in states.TRACKING} & set(states.FINAL)
    # The groups writers use agree with the transitions they filter by.
    assert set(states.WAITING) == set(states.CANCEL.sources) == set(states.CLAIM.sources) - {E.SENDING}
    assert set(states.REQUEST_TO_EXPAND) == set(states.START_EXPANSION.sources)
    assert not set(states.REQUEST_DORMANT) & set(states.REQUEST_TO_EXPAND)
    assert set(states.CANCEL_REQUEST.sources) == set(R) - {R.CANCELLED}
    for group in (states.WAITING, states.FINAL, states.ACCEPTED, states.TRACKED, states.UNFINISHED):
        assert len(set(group)) == len(group)


def test_the_models_take_their_states_from_here():
    assert TextOfEmail.Status is E and MessageRequest.Status is R
    assert TextOfEmail._meta.get_field("status").default == states.ENQUEUE.target
    assert MessageRequest._meta.get_field("status").default == states.REQUEST_CREATE.target


# --- No writer around the table: status literals anywhere else are refused ---

STATE_VALUES = set(E.values) | set(R.values)
_QUOTED = re.compile(r"'(" + "|".join(sorted(STATE_VALUES)) + r")'")

# Literals that happen to spell a state but mean something else, counted per file, so a new
# one (a writer bypassing dbmail.states) fails until it uses the constants or is justified here.
NOT_STATES = {
    "dbmail/intake/spool.py": {"sent": 1},  # the sent/ directory's name
    "dbmail/models.py": {
        "bounced": 1,  # Suppression.Reason
        "complained": 1,  # Suppression.Reason
        "queued": 1,  # SpoolFile.Status: a file's, following its emails (dbmail.intake.spool)
        "deferred": 1,
        "sent": 1,
        "dropped": 1,
    },
    "dbmail/ops/runloop.py": {"failed": 1},  # Round.FAILED: how a round of a long-running command ended
    "dbmail/ops/cron.py": {"expanded": 1, "sent": 1, "deferred": 1, "dropped": 1},  # the run summary's keys
    "dbmail/panel/views/compose.py": {"draft": 1},  # a template variable's name
    "dbmail/intake/api/serializers.py": {"draft": 1},  # the API's field name (draft: true)
    # A request's state as shown ("Sending"), not an email's; LOST, the bar segment of dropped or bounced mail.
    "dbmail/panel/progress.py": {"sending": 1, "failed": 1},
    # Tracking: the event types (what a report says, not our states) and the words of the sources they come from.
    "dbmail/track/events.py": {"delivered": 1, "deferred": 1, "bounced": 1, "complained": 1},  # EventType
    "dbmail/track/anymail.py": {"delivered": 1, "deferred": 1, "bounced": 1, "complained": 1, "failed": 1},  # anymail's
    "dbmail/track/logfollow.py": {"sent": 1, "deferred": 1, "bounced": 1},  # Postfix's status=
    "mailgate/gate/bounces.py": {"delivered": 1, "expanded": 1, "failed": 1},  # RFC 3464 Action values
    "mailgate/models.py": {"sending": 1, "sent": 1, "failed": 1},  # Message.Status, InboundMessage.Status
}
EXEMPT = {"dbmail/states.py"}


def state_literals(source):
    """Counter of state values written as string literals in `source`, and SQL-quoted ones inside strings."""
    found, quoted = Counter(), []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in STATE_VALUES:
                found[node.value] += 1
            else:
                quoted += _QUOTED.findall(node.value)
    return found, quoted


def source_files():
    for top in ("dbmail", "mailgate", "mailsite"):
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "migrations" not in path.parts and relative not in EXEMPT:
                yield relative, path.read_text()


def test_the_check_finds_a_writer_that_bypasses_the_states():
    found, quoted = state_literals(
        'TextOfEmail.objects.filter(pk=1).update(status="sent")\n'
        "if email.status in ('queued', \"deferred\"): pass\n"
        "cursor.execute(\"UPDATE dbmail_textofemail SET status = 'dropped' WHERE id = %s\", [pk])\n"
        'x = f"{a} queued"  # not a literal of a state\n'
    )
    assert found == Counter({"sent": 1, "deferred": 1, "queued": 1})
    assert quoted == ["dropped"]


def test_no_status_literals_outside_states_py():
    unexpected, stale = [], []
    for path, source in source_files():
        found, quoted = state_literals(source)
        allowed = Counter(NOT_STATES.get(path, {}))
        unexpected += [f"{path}: {value!r} x{n - allowed[value]}" for value, n in found.items() if n > allowed[value]]
        unexpected += [f"{path}: '{value}' inside a string (SQL?)" for value in quoted]
        stale += [f"{path}: {value!r}" for value, n in allowed.items() if found[value] < n]
    assert not unexpected, "use dbmail.states instead of these literals: " + "; ".join(unexpected)
    assert not stale, "no longer there, drop from NOT_STATES: " + "; ".join(stale)
    assert {path for path, _ in source_files()} >= set(NOT_STATES)
