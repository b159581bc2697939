"""A request's chunks written by a forked process of its own while this one renders the next.

In one process the renderer and the writers share the interpreter lock: a
writer coming back from each call into PostgreSQL (the COPY alone is three)
waits until the renderer lets go of it, up to sys.getswitchinterval(), and
PostgreSQL waits with it. Forked, the writers (the same ChunkWriter pair as
in-process: tokens first, then the emails with their checkpoint) have a
process to themselves; the renderer sends each chunk's COPY text down a
pipe, which costs it a copy of the bytes.

Nothing about what is committed changes: each chunk still commits with its
checkpoint, in order, on the child's own connections (dbmail.ops.forks: no
connection crosses the fork). The child tells the parent each chunk it
committed (the parent's on_chunk runs then, a chunk or two later than the
commit), that it stopped (the request is no longer this expander's), or the
error that ended it, which the parent raises as its own: expand() then
treats it as it treats a writer thread's. The child ignores stop signals:
the parent finishes the chunk in hand and closes the pipe, and the child
commits what it was given and exits. If the parent dies, the child sees the
pipe close and does the same; if the child dies, the parent raises
InterfaceError, and the request goes to the next run when its lease ends,
from its checkpoint.
"""

import fcntl
import os
import pickle
import select
import signal
import threading

from django.db import DatabaseError, InterfaceError

from dbmail.ops import forks

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
WATCH_SECONDS = 1.0  # how often an idle child looks whether its parent is still there
PIPE_BYTES = 1 << 20  # a chunk's COPY text (~2 MB for 1,000 emails) in two writes, not thirty


class WriterProcess:
    """The writer interface of dbmail.intake.expand (submit, stopped, close), in a forked process.

    `make_writer(commit)` builds the writer in the child around `commit(last_position, emails)`.
    """

    def __init__(self, make_writer, commit, on_chunk=None):
        self.on_chunk = on_chunk
        self.error = None
        self._stopped = False
        self._done = False
        self._frames = forks.Reader()
        forks.prepare()  # first: should closing our connections fail, no pipe is left open
        to_child, self._to_child = forks.pipe()
        self._from_child, from_parent = forks.pipe()
        try:
            if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux's; elsewhere the default capacity costs more writes
                fcntl.fcntl(self._to_child, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # above /proc/sys/fs/pipe-max-size: the same
            pass
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.pid = forks.fork(keep=(to_child, from_parent))
            if self.pid == 0:  # the child: never returns
                try:
                    for signum in STOP_SIGNALS:
                        signal.signal(signum, signal.SIG_IGN)
                    _child_main(make_writer, commit, to_child, from_parent)
                finally:
                    os._exit(1)
        except OSError:
            for fd in (to_child, from_parent, self._to_child, self._from_child):
                forks.close(fd)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        forks.close(to_child)
        forks.close(from_parent)

    @property
    def stopped(self):
        self._read(block=False)
        return self._stopped

    def submit(self, last_position, emails):
        self._read(block=False)
        if self.error:
            raise self.error
        try:
            forks.write_all(self._to_child, forks.frame("chunk", (last_position, emails)))
        except BrokenPipeError:
            self._read(block=True)  # what the child said before it went
            raise self.error or InterfaceError("the expansion's writing process ended") from None

    def close(self):
        """Wait until the child has committed (or given up) every chunk; raise its error if any."""
        try:
            forks.close(self._to_child)  # the end of the chunks
            self._read(block=True)
        finally:
            forks.close(self._from_child)
            _, status = forks.waitpid(self.pid)
        if self.error:
            raise self.error
        if not self._done:
            raise InterfaceError(f"the expansion's writing process {forks.died(status)}")

    def _read(self, block):
        """Take what the child has said so far (block: until it closes its end)."""
        while not self._done:
            if not block and not select.select([self._from_child], [], [], 0)[0]:
                return
            data = os.read(self._from_child, 1 << 16)
            if not data:
                return
            for kind, payload in self._frames.feed(data):
                if kind == "chunk":
                    if self.on_chunk:
                        self.on_chunk(payload)
                elif kind == "stopped":
                    self._stopped = True
                elif kind == "error":
                    self.error = payload
                elif kind == "done":
                    self._done = True


def _child_main(make_writer, commit, fd_in, fd_out):
    """The child's whole life: commit the chunks the parent sends until it closes the pipe, then exit."""
    lock = threading.Lock()  # the emails' writer thread and this one both report

    def report(kind, payload=None):
        with lock:
            forks.write_all(fd_out, forks.frame(kind, payload))

    def reported_commit(last_position, emails):
        committed = commit(last_position, emails)
        if committed:
            report("chunk", emails.count)
        else:
            report("stopped")
        return committed

    code = 0
    try:
        writer = make_writer(reported_commit)
        frames, parent = forks.Reader(), os.getppid()
        try:
            while True:
                if not select.select([fd_in], [], [], WATCH_SECONDS)[0]:
                    if os.getppid() != parent:  # a parent gone without its pipe closing (a fork kept a copy)
                        break
                    continue
                if not (data := os.read(fd_in, PIPE_BYTES)):
                    break
                for _, (last_position, emails) in frames.feed(data):
                    if not writer.stopped:  # else drained: nothing more is written once not ours
                        writer.submit(last_position, emails)
        finally:
            writer.close()  # raises the writers' error, if any
        report("done")
    except BaseException as exc:
        code = 1
        try:
            report("error", _picklable(exc))
        except OSError:
            pass  # the parent is gone: nobody to tell
    finally:
        os._exit(code)  # no cleanup of what the parent owns (its connections, its atexit)


def _picklable(exc):
    """`exc` as the parent can raise it: itself, or the same kind of error in words."""
    if _survives_pickling(exc):
        return exc
    words = f"{type(exc).__name__}: {exc}"
    # A database error keeps the nearest class the parent can have: expand() lets those through, as the database's.
    kinds = type(exc).__mro__ if isinstance(exc, DatabaseError) else ()
    for kind in kinds:
        try:
            candidate = kind(words)
        except Exception:
            continue
        if _survives_pickling(candidate):
            return candidate
    return RuntimeError(words)


def _survives_pickling(exc):
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True
