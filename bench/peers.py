"""The peers phase: django-post_office and django-mailer on the same messages, sink and database.

Both run as their documentation says, in a project of their own
(bench/peer_settings.py: their apps, Django's SMTP backend) whose queue
tables sit in the benchmark's database. Each send figure is N / wall time of
the whole management command, start-up included, as dbmail_cron's is.

Two senders at once: two of their send commands started together on the same
queue, each with its own lock file, as two hosts would be (a file lock
guards one machine only). The sink counts duplicates by Message-ID and by
recipient (each message goes to its own address, and a message built twice
may carry two Message-IDs).
"""

import time
from importlib import metadata

from bench import stats

PO_TABLES = "post_office_email CASCADE"
MAILER_TABLES = "mailer_message, mailer_messagelog"


def _truncate(b, tables):
    with b.conn.cursor() as cur:
        cur.execute(f"TRUNCATE {tables}")


def _send(b, name, commands, expected):
    """Run the management commands at once against a fresh sink; (msgs/s, sink report)."""
    from bench.run import Sink

    sink = Sink(b.workdir, name)
    started = time.perf_counter()
    procs = [
        b.start_manage(f"{name}-{i}", *argv, env=b.env(sink.port, **env)) for i, (argv, env) in enumerate(commands)
    ]
    outputs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - started
    report = sink.stop()
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"bench: {name} failed (exit {proc.returncode}):\n{out}")
    unique = report["messages"] - report["duplicate_recipients"]
    report["missing"] = expected - unique
    return expected / seconds, report


def _peer_env():
    return {"settings": "bench.peer_settings"}


def _po_send_command(b, lock="post_office"):
    return (["send_queued_mail", "-L", str(b.workdir / lock)], _peer_env())


def _mailer_send_command(b, lock="mailer"):
    return (["send_mail"], {**_peer_env(), "BENCH_MAILER_LOCK": str(b.workdir / lock)})


def _enqueue(b, mode, count, name):
    figures = b.child("peer_child.py", mode, count, name=name, env=b.env(settings="bench.peer_settings"))
    if figures["emails"] != count:
        raise SystemExit(f"bench: {mode} made {figures['emails']} emails, expected {count}")
    return figures["emails"] / figures["seconds"]


def _alone(b, peer, tables, mode, count, send_command, step):
    """`reps` times over: empty the tables, enqueue `count` (`mode` of peer_child.py), send with one command.
    (enqueue rates, send rates); a message missed or sent twice by one sender stops the benchmark."""
    prefix = mode.split("-")[0]  # the sink's and the commands' names: po-send-0, mailer-send-0
    enqueues, sends = [], []
    for rep in range(b.args.reps):
        b.step(f"{step}, repetition {rep + 1}/{b.args.reps}")
        _truncate(b, tables)
        enqueues.append(_enqueue(b, mode, count, f"{mode}-{rep}"))
        rate, report = _send(b, f"{prefix}-send-{rep}", [send_command(b)], count)
        if report["missing"] or report["duplicate_recipients"]:
            raise SystemExit(f"bench: {peer} alone missed {report['missing']} or duplicated some")
        sends.append(rate)
    return enqueues, sends


def _two_senders(b, tables, mode, count, send_command):
    """Two send commands at once on one queue of `count`, each with its own lock file (two hosts)."""
    _truncate(b, tables)
    _enqueue(b, mode, count, f"{mode}-two")
    two = [send_command(b, "host-a"), send_command(b, "host-b")]
    _, report = _send(b, f"{mode.split('-')[0]}-two", two, count)  # po-two, mailer-two
    _truncate(b, tables)
    return {key: report[key] for key in ("duplicates", "duplicate_recipients", "missing", "messages")}


def run(b):
    from bench.run import set_active_users

    n, m, reps = b.args.peer_messages, b.args.mailer_messages, b.args.reps
    set_active_users(b, n)
    po, mailer = {"version": metadata.version("django-post-office")}, {"version": metadata.version("django-mailer")}

    bulk, sends = _alone(
        b,
        "post_office",
        PO_TABLES,
        "po-bulk",
        n,
        _po_send_command,
        f"post_office: send_many of {n:,} from a template, then send_queued_mail",
    )
    po["send_many_msgs_s"] = stats.summary(bulk)
    po["send_queued_mail_msgs_s"] = stats.summary(sends)

    b.step(f"post_office: mail.send, one email per call, {b.args.enqueue:,} calls x{reps}")
    each = []
    for rep in range(reps):
        _truncate(b, PO_TABLES)
        each.append(_enqueue(b, "po-each", b.args.enqueue, f"po-each-{rep}"))
    po["mail_send_per_call_msgs_s"] = stats.summary(each)

    b.step(f"post_office: send_queued_mail on an empty queue x{b.args.startup_reps}")
    _truncate(b, PO_TABLES)
    starts = []
    for _rep in range(b.args.startup_reps):
        started = time.perf_counter()
        _send(b, "po-startup", [_po_send_command(b)], 0)
        starts.append(time.perf_counter() - started)
    po["startup_s"] = stats.summary(starts, 3)

    b.step(f"post_office: two send_queued_mail at once (two hosts' lock files) on {n:,}")
    po["two_senders"] = _two_senders(b, PO_TABLES, "po-bulk", n, _po_send_command)

    per_call, sends = _alone(
        b,
        "django-mailer",
        MAILER_TABLES,
        "mailer-each",
        m,
        _mailer_send_command,
        f"django-mailer: send_mail x{m:,}, then manage.py send_mail",
    )
    mailer["send_mail_per_call_msgs_s"] = stats.summary(per_call)
    mailer["send_all_msgs_s"] = stats.summary(sends)
    mailer["messages"] = m

    b.step(f"django-mailer: two manage.py send_mail at once (two hosts' lock files) on {m:,}")
    mailer["two_senders"] = _two_senders(b, MAILER_TABLES, "mailer-each", m, _mailer_send_command)

    b.results["peers"] = {"post_office": po, "django_mailer": mailer, "messages": n}
    report_rows(b, po, mailer, n, m)


def report_rows(b, po, mailer, n, m):
    from bench.run import TARGETS, verdict

    send = b.results.get("send_msgs_s")
    po_send = po["send_queued_mail_msgs_s"]
    target = TARGETS["over_post_office"]
    versus = ""
    if send:
        ratio = send / po_send["median"]
        b.results["peers"]["send_over_post_office"] = round(ratio, 2)
        versus = f"dbmail_cron {ratio:.1f}x: >= {target}x  {verdict(ratio >= target)}"
    b.row(f"post_office send_queued_mail, {n:,} (start-up incl.)", stats.shown(po_send, " msg/s"), versus)
    expand = b.results.get("expand_emails_s_100k")
    versus = ""
    if expand:
        ratio = expand / po["send_many_msgs_s"]["median"]
        b.results["peers"]["expand_over_send_many"] = round(ratio, 2)
        target = TARGETS["expand_over_send_many"]
        versus = f"expansion {ratio:.1f}x: >= {target}x  {verdict(ratio >= target)}"
    b.row(f"post_office send_many, {n:,} from a template", stats.shown(po["send_many_msgs_s"], " emails/s"), versus)
    enqueue = b.results.get("enqueue_msgs_s")
    per_call = po["mail_send_per_call_msgs_s"]
    versus = f"enqueue() {enqueue / per_call['median']:.1f}x" if enqueue else ""
    b.row("post_office mail.send, one email per call", stats.shown(per_call, " calls/s"), versus)
    b.row("post_office start-up, empty queue", stats.shown(po["startup_s"], " s", ".2f"), "")
    b.row(f"django-mailer send_mail + send_all, {m:,}", stats.shown(mailer["send_all_msgs_s"], " msg/s"), "")
    b.row(
        "django-mailer send_mail, one email per call", stats.shown(mailer["send_mail_per_call_msgs_s"], " calls/s"), ""
    )
    for name, peer, count in (("post_office", po, n), ("django-mailer", mailer, m)):
        two = peer["two_senders"]
        b.row(
            f"{name}: two senders at once, {count:,}",
            f"{two['messages']:,} sent",
            f"dup {two['duplicate_recipients']} (by Message-ID {two['duplicates']}), missing {two['missing']}",
        )
