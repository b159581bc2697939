"""Health of every moving part, for dbmail_status and monitoring: one finding per check, in words.

Each check looks at one part (the sender, expansion, the tracking consumer,
the log follower, DKIM signing; mailgate adds the IMAP poller and the gate) and says ok,
warning or critical against its thresholds (settings, see README), or
unknown when it cannot tell. The exit code follows the monitoring-plugin
convention: 0 ok, 1 warning, 2 critical, 3 unknown (the worst finding wins,
unknown only when nothing is worse).

dbmail never imports mailgate: an app adds its checks to the registry here
from its AppConfig.ready() with `register(name, function)`; a check is a
function of (now, options) returning a Finding. `options` holds what the
command line overrides (today "stuck_after", a timedelta or None).
"""

import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, timedelta

from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.models import (
    CronHeartbeat,
    DkimKey,
    MessageRequest,
    SenderAccount,
    SendingProblem,
    TextOfEmail,
    TrackingQueueItem,
    UnsignedMail,
)
from dbmail.send import backoff, buckets, caps

OK, WARNING, CRITICAL, UNKNOWN = "ok", "warning", "critical", "unknown"
EXIT_CODES = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
_RANK = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}  # how bad, for picking the worst
FOLLOWER = "dbmail_track --follow-log"  # the log follower's heartbeat


@dataclass
class Finding:
    check: str
    state: str
    summary: str  # what is wrong (or right), in words
    details: dict = field(default_factory=dict)


@dataclass
class Report:
    findings: list
    counts: dict  # emails per status, "held" included (dbmail.models.TextOfEmail.counts)
    requests: dict  # requests per status, "held" included
    oldest_due_age: timedelta | None
    last_success: object  # datetime or None: the last successful dbmail_cron run
    possibly_delivered: int = 0  # emails with an attempt whose answer was lost (a possible duplicate)
    sending_problems: list = field(default_factory=list)  # unresolved SendingProblem rows, the latest first

    @property
    def state(self):
        return max((f.state for f in self.findings), key=_RANK.__getitem__, default=OK)

    @property
    def code(self):
        return EXIT_CODES[self.state]

    @property
    def problems(self):
        return [f for f in self.findings if f.state != OK]

    def as_dict(self):
        return {
            "state": self.state,
            "code": self.code,
            "checks": [asdict(f) for f in self.findings],
            "emails": self.counts,
            "requests": self.requests,
            "oldest_due_seconds": int(self.oldest_due_age.total_seconds()) if self.oldest_due_age else None,
            "last_dbmail_cron_success": self.last_success.isoformat() if self.last_success else None,
            "possibly_delivered": self.possibly_delivered,
            "sending_problems": [
                {
                    "account": p.account.address if p.account_id else None,
                    "server": p.server,
                    "stage": p.stage,
                    "smtp_code": p.smtp_code,
                    "text": p.text,
                    "emails_deferred": p.emails_deferred,
                    "first_seen_at": p.first_seen_at.isoformat(),
                    "last_seen_at": p.last_seen_at.isoformat(),
                }
                for p in self.sending_problems
            ],
        }


_CHECKS = {}


def register(name, check):
    """Add (or replace) the check `name`; checks run in the order they were first registered."""
    _CHECKS[name] = check


def registered():
    return list(_CHECKS)


def run(now=None, **options):
    """Every registered check, and the outbox's counts. Database errors propagate (nothing can be told)."""
    from django.db import DatabaseError

    now = now or timezone.now()
    findings = []
    for name, check in _CHECKS.items():
        try:
            finding = check(now, options)
        except DatabaseError:
            raise
        except Exception as exc:  # a broken check says so and the others still run
            finding = Finding(name, UNKNOWN, f"the check itself failed: {type(exc).__name__}: {exc}")
        findings.append(finding)
    # One scan of the outbox for both: emails per (shown) status, and those possibly delivered twice.
    rows = (
        TextOfEmail.objects.values_list("status", "account_id")
        .annotate(n=Count("id"), unknown=Count("id", filter=Q(possibly_delivered__gt=0)))
        .order_by()
    )
    rows = list(rows)
    counts = TextOfEmail.shown_counts([(status, account, n) for status, account, n, _ in rows])
    return Report(
        findings,
        counts,
        _request_counts(),
        _oldest_due_age(now),
        _last_success("dbmail_cron"),
        possibly_delivered=sum(unknown for *_, unknown in rows),
        sending_problems=unresolved_problems(),
    )


def unresolved_problems():
    return list(SendingProblem.objects.filter(resolved_at__isnull=True).select_related("account"))


def describe_problem(problem):
    """One sending problem in words (dbmail_status prints one line each)."""
    who = problem.account.address if problem.account_id else "the site's mail"
    return (
        f"{who} via {problem.server}, since {problem.first_seen_at:%Y-%m-%d %H:%M:%S}, "
        f"last {problem.last_seen_at:%Y-%m-%d %H:%M:%S} ({problem.emails_deferred} deferred): {problem.text}"
    )


def grade(value, warning, critical):
    """OK, WARNING or CRITICAL for a value (an age or a count) against two thresholds."""
    if value is None or value < warning:
        return OK
    return CRITICAL if value >= critical else WARNING


def worst(*grades):
    return max(grades, key=_RANK.__getitem__, default=OK)


def human(delta):
    """A duration as people say it: "12 seconds", "3 minutes", "2 hours 5 minutes", "4 days"."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return _plural(seconds, "second")
    if seconds < 3600:
        return _plural(seconds // 60, "minute")
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return _plural(hours, "hour") + (f" {_plural(minutes, 'minute')}" if minutes else "")
    return _plural(seconds // 86400, "day")


def ago(moment, now=None):
    """ "3 minutes ago", or "never" for None."""
    if moment is None:
        return "never"
    delta = (now or timezone.now()) - moment
    if delta.total_seconds() < 0:
        return "in " + human(-delta)  # another host's clock runs ahead
    return human(delta) + " ago"


def _plural(n, unit):
    return f"{n} {unit}{'s' * (n != 1)}"


def beat(command, started_at, summary=None, error=""):
    """Record a run of `command` on this host: success when there is no error."""
    now = timezone.now()
    defaults = {"last_started_at": started_at, "last_summary": summary or {}, "last_error": error}
    if not error:
        defaults["last_success_at"] = now
    # One INSERT ... ON CONFLICT DO UPDATE: update_or_create would take four round trips (its
    # transaction, a locking read, the update) at the end of every run of every command.
    CronHeartbeat.objects.bulk_create(
        [CronHeartbeat(command=command, host=socket.gethostname(), **defaults)],
        update_conflicts=True,
        unique_fields=["command", "host"],
        update_fields=list(defaults),
    )


# --- dbmail's own checks -----------------------------------------------------------------------


def _thresholds(options):
    critical = options.get("stuck_after") or timedelta(seconds=conf.DBMAIL_STUCK_AFTER_SECONDS)
    return min(timedelta(seconds=conf.DBMAIL_HEALTH_WARNING_SECONDS), critical), critical


def _inactive_accounts():
    return SenderAccount.objects.filter(active=False).values("pk")


def _waiting_by_design(now):
    """Waiting mail nobody should be alarmed by: of a paused request, or of an account at its daily cap."""
    capped = [account.pk for account, _, _ in caps.reached(now)]
    paused = MessageRequest.objects.filter(status=states.RequestStatus.PAUSED).values("pk")
    return Q(request_id__in=paused) | Q(account_id__in=capped)


def _oldest_due_age(now):
    """Age of the longest-due email that is not held (nor waiting by design: a paused request, a daily cap)."""
    oldest = (
        TextOfEmail.objects.filter(status__in=states.WAITING, next_attempt_at__lte=now)
        .exclude(account_id__in=_inactive_accounts())
        .exclude(_waiting_by_design(now))
        .aggregate(m=Min("next_attempt_at"))["m"]
    )
    return now - oldest if oldest else None


def _last_success(command):
    return (
        CronHeartbeat.objects.filter(command=command, last_success_at__isnull=False)
        .order_by("-last_success_at")
        .values_list("last_success_at", flat=True)
        .first()
    )


def _request_counts():
    held = Q(status__in=states.REQUEST_TO_EXPAND, sender__active=False)
    counts = dict(MessageRequest.objects.exclude(held).values_list("status").annotate(n=Count("id")).order_by())
    n_held = MessageRequest.objects.filter(held).count()
    if n_held:
        counts[states.HELD] = n_held
    return counts


def check_sender(now, options):
    """dbmail_cron: mail that is due gets sent; its heartbeat is recent whenever mail waits."""
    warning, critical = _thresholds(options)
    grades, words = [OK], []
    age = _oldest_due_age(now)
    if age:
        grades.append(grade(age, warning, critical))
        if age >= warning:
            words.append(f"an email has been due for {human(age)}")
    if TextOfEmail.objects.filter(status=states.EmailStatus.SENDING, leased_until__lte=now - critical).exists():
        grades.append(CRITICAL)
        words.append("emails are held by a sender whose lease ran out long ago")
    last = _last_success("dbmail_cron")
    waiting = (
        TextOfEmail.objects.filter(status__in=states.WAITING).exclude(account_id__in=_inactive_accounts()).exists()
    )
    if waiting and (last is None or now - last >= warning):
        grades.append(CRITICAL if last is None else grade(now - last, warning, critical))
        words.append(
            f"mail is waiting and dbmail_cron last succeeded {human(now - last) + ' ago' if last else 'never'}"
        )
    # A host whose latest run failed (the SMTP server or the database unreachable from there); rows of
    # hosts that stopped running long ago are left out.
    failing = list(
        CronHeartbeat.objects.filter(command="dbmail_cron", last_started_at__gte=now - critical)
        .exclude(last_error="")
        .order_by("host")[:10]
    )
    for hb in failing:
        grades.append(WARNING)
        words.append(f"the last dbmail_cron run on {hb.host} failed: {hb.last_error[:300]}")
    # A server or account refusing the session defers mail without counting attempts: say so at once,
    # before the due mail's age grows past the thresholds.
    problems = unresolved_problems()
    for problem in problems[:5]:
        grades.append(WARNING)
        words.append(f"sending problem: {describe_problem(problem)[:400]}")
    held = TextOfEmail.objects.filter(status__in=states.WAITING, account_id__in=_inactive_accounts())
    n_held = held.count()
    state = worst(*grades)
    if state == OK:
        ran = f"dbmail_cron last succeeded {human(now - last)} ago" if last else "dbmail_cron has not run yet"
        words.append(f"{ran}; {'oldest due ' + human(age) if age else 'nothing due'}")
    if n_held:
        accounts = sorted(set(held.values_list("account__address", flat=True)[:1000]))
        words.append(f"{n_held} email(s) held while their sender account is inactive ({', '.join(accounts[:5])})")
    details = {
        "oldest_due_seconds": int(age.total_seconds()) if age else None,
        "last_success": last.isoformat() if last else None,
        "held": n_held,
        "hosts_failing": [hb.host for hb in failing],
        "sending_problems": len(problems),
    }
    return Finding("sender", state, "; ".join(words), details)


def check_expansion(now, options):
    """Requests become emails: none failed, none due for long, none left by a dead expander."""
    warning, critical = _thresholds(options)
    grades, words = [OK], []
    active = MessageRequest.objects.filter(sender__active=True)
    failed = list(
        MessageRequest.objects.filter(status=states.RequestStatus.FAILED)
        .order_by("failed_at", "pk")[:6]
        .values("pk", "failure", "failed_at")
    )
    n_failed = MessageRequest.objects.filter(status=states.RequestStatus.FAILED).count()
    if n_failed:
        grades.append(CRITICAL)
        shown = "; ".join(
            f"#{r['pk']} {human(now - r['failed_at']) + ' ago' if r['failed_at'] else ''}: {r['failure'][:200]}"
            for r in failed[:5]
        )
        more = f" and {n_failed - 5} more" if n_failed > 5 else ""
        words.append(f"{n_failed} request(s) failed (retry once fixed, or cancel): {shown}{more}")
    oldest_due = active.filter(status=states.RequestStatus.QUEUED, send_at__lte=now).aggregate(m=Min("send_at"))["m"]
    if oldest_due and now - oldest_due >= warning:
        grades.append(grade(now - oldest_due, warning, critical))
        words.append(f"a request has been due for expansion for {human(now - oldest_due)}")
    dead = active.filter(status=states.RequestStatus.EXPANDING, expand_lease_until__lte=now).aggregate(
        m=Min("expand_lease_until")
    )["m"]
    if dead and now - dead >= warning:
        grades.append(grade(now - dead, warning, critical))
        words.append(f"a request has been stuck expanding for {human(now - dead)} past its lease")
    state = worst(*grades)
    if state == OK:
        expanding = active.filter(status=states.RequestStatus.EXPANDING).count()
        words.append(f"{expanding} request(s) expanding, none failed or stuck")
    held = MessageRequest.objects.filter(status__in=states.REQUEST_TO_EXPAND, sender__active=False).count()
    if held:
        words.append(f"{held} request(s) held while their sender account is inactive")
    details = {"failed_count": n_failed, "failed_requests": [r["pk"] for r in failed], "held": held}
    return Finding("expansion", state, "; ".join(words), details)


def check_tracking(now, options):
    """The tracking consumer (dbmail_track) keeps up: how long the oldest event has waited, or the queue's depth."""
    if conf.TRACKING_QUEUE_URL:
        return _check_rabbitmq(now)
    warning = timedelta(seconds=conf.TRACKING_HEALTH_WARNING_SECONDS)
    critical = timedelta(seconds=conf.TRACKING_HEALTH_CRITICAL_SECONDS)
    waiting = TrackingQueueItem.objects.aggregate(n=Count("id"), oldest=Min("enqueued_at"))
    if not waiting["n"]:
        return Finding("tracking", OK, "no tracking event waiting (database queue)", {"waiting": 0})
    age = now - waiting["oldest"]
    state = grade(age, warning, critical)
    words = f"{waiting['n']} tracking event(s) waiting, the oldest for {human(age)} (database queue)"
    if state != OK:
        last = _last_success("dbmail_track")
        words += f"; dbmail_track last succeeded {human(now - last) + ' ago' if last else 'never'}"
    return Finding("tracking", state, words, {"waiting": waiting["n"], "oldest_seconds": int(age.total_seconds())})


def _check_rabbitmq(now):
    depth, consumers, error = rabbitmq_depth()
    if error:
        return Finding(
            "tracking", UNKNOWN, f"cannot tell the RabbitMQ backlog: {error}", {"queue": conf.TRACKING_QUEUE}
        )
    state = grade(depth, conf.TRACKING_HEALTH_DEPTH_WARNING, conf.TRACKING_HEALTH_DEPTH_CRITICAL)
    words = [f"{depth} tracking event(s) waiting in RabbitMQ queue {conf.TRACKING_QUEUE}"]
    last = _last_success("dbmail_track")
    if depth:
        # RabbitMQ tells no message's age: a backlog nobody consumed for long is judged by the consumer's heartbeat.
        idle = now - last if last else None
        warning = timedelta(seconds=conf.TRACKING_HEALTH_WARNING_SECONDS)
        critical = timedelta(seconds=conf.TRACKING_HEALTH_CRITICAL_SECONDS)
        idle_state = CRITICAL if last is None else grade(idle, warning, critical)
        if idle_state != OK:
            words.append(f"dbmail_track last succeeded {human(idle) + ' ago' if last else 'never'}")
        state = worst(state, idle_state)
    return Finding("tracking", state, "; ".join(words), {"waiting": depth, "consumers": consumers})


def rabbitmq_depth():
    """(messages, consumers, error) of the tracking queue, by a passive declare that changes nothing."""
    import pika

    params = pika.URLParameters(conf.TRACKING_QUEUE_URL)
    params.connection_attempts, params.socket_timeout, params.blocked_connection_timeout = 1, 5, 5
    connection = None
    try:
        connection = pika.BlockingConnection(params)
        declared = connection.channel().queue_declare(conf.TRACKING_QUEUE, passive=True)
        return declared.method.message_count, declared.method.consumer_count, ""
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return (
                None,
                None,
                f"the queue {conf.TRACKING_QUEUE} does not exist (TRACKING_QUEUE; nothing declared it yet)",
            )
        return None, None, f"RabbitMQ refused: {exc.reply_text}"
    except (pika.exceptions.AMQPError, OSError) as exc:
        return None, None, f"cannot reach RabbitMQ: {type(exc).__name__} {exc}".strip()
    finally:
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass


def check_log_follower(now, options):
    """`dbmail_track --follow-log`, where it runs: its heartbeat is recent."""
    beats = list(CronHeartbeat.objects.filter(command=FOLLOWER).order_by("host"))
    if not beats:
        return Finding("log follower", OK, "not in use (no dbmail_track --follow-log has run)", {})
    warning = timedelta(seconds=conf.TRACKING_HEALTH_FOLLOWER_WARNING_SECONDS)
    critical = timedelta(seconds=conf.TRACKING_HEALTH_FOLLOWER_CRITICAL_SECONDS)
    grades, words = [], []
    for hb in beats:
        seen = hb.last_success_at or hb.last_started_at
        age = now - seen if seen else None
        state = CRITICAL if age is None else grade(age, warning, critical)
        path = (hb.last_summary or {}).get("path", "")
        if state == OK:
            words.append(f"{hb.host} follows {path} (seen {human(age)} ago)")
        else:
            error = f"; last error: {hb.last_error[:200]}" if hb.last_error else ""
            words.append(f"{hb.host}: no sign of life for {human(age) if age else 'ever'} ({path}){error}")
        grades.append(state)
    return Finding("log follower", worst(*grades), "; ".join(words), {"hosts": [hb.host for hb in beats]})


def check_reputation(now, options):
    """What holds mail back on purpose: destinations slowed by their pushback, daily caps, paused requests."""
    grades, words = [OK], []
    slowed = buckets.slowed(now)
    for b in slowed[:10]:
        grades.append(WARNING)
        configured = f"{b.configured_per_minute:,.0f} a minute" if b.configured_per_minute else "no limit"
        words.append(
            f"destination {b.name} slowed to {backoff.effective_rate(b, now) or backoff.target(0):,.0f} a minute "
            f"({configured} configured) since {b.slowed_since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC after "
            f"{b.pushbacks} pushback(s), last: {b.pushback_text[:200]}; full speed again by "
            f"{backoff.recovered_at(b, now).astimezone(UTC):%H:%M} UTC if nothing pushes back"
        )
    capped = caps.reached(now)
    for account, cap, taken in capped[:10]:
        words.append(f"{account.address}: {caps.WAITING_WORDS} ({taken:,} of {cap:,} today)")
    paused = list(
        MessageRequest.objects.filter(status=states.RequestStatus.PAUSED)
        .order_by("paused_at", "pk")
        .values("pk", "paused_at", "paused_reason")[:10]
    )
    for row in paused:
        grades.append(WARNING)
        since = f" since {row['paused_at'].astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if row["paused_at"] else ""
        words.append(f"request #{row['pk']} paused{since}: {row['paused_reason'][:300]} (resume or cancel it)")
    if not words:
        words.append("every destination at full speed, no daily cap reached, no request paused")
    details = {
        "slowed": [
            {
                "group": b.name,
                "per_minute": round(backoff.effective_rate(b, now) or backoff.target(0), 1),
                "configured_per_minute": b.configured_per_minute,
                "since": b.slowed_since.isoformat() if b.slowed_since else None,
                "pushbacks": b.pushbacks,
                "last": b.pushback_text,
            }
            for b in slowed
        ],
        "daily_cap_reached": [account.address for account, _, _ in capped],
        "paused_requests": [row["pk"] for row in paused],
    }
    return Finding("reputation", worst(*grades), "; ".join(words), details)


def check_dkim(now, options):
    """DKIM signing: a warning per From domain whose mail went out unsigned today or yesterday (dbmail.send.dkim)."""
    today = timezone.localdate(now)
    rows = (
        UnsignedMail.objects.filter(day__gte=today - timedelta(days=1))
        .values("domain")
        .annotate(n=Sum("count"))
        .order_by("domain")
    )
    keyed = set(DkimKey.objects.filter(active=True).values_list("domain", flat=True))
    words = []
    for row in rows:
        domain = row["domain"]
        why = (
            "it has a key now: that mail went out before the key was made, or could not be signed (see the log)"
            if domain in keyed
            else f"no key (dbmail_dkim generate {domain})"
        )
        words.append(f"{row['n']} email(s) from {domain} went out without a DKIM signature since yesterday: {why}")
    details = {"unsigned": {row["domain"]: row["n"] for row in rows}, "domains_with_keys": len(keyed)}
    if words:
        return Finding("dkim", WARNING, "; ".join(words), details)
    return Finding("dkim", OK, f"no unsigned mail since yesterday; {len(keyed)} domain(s) with a DKIM key", details)


register("sender", check_sender)
register("reputation", check_reputation)
register("expansion", check_expansion)
register("tracking", check_tracking)
register("log follower", check_log_follower)
register("dkim", check_dkim)
