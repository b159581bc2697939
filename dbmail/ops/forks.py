"""What a run and the processes it forks share: the rules of forking, and frames over a pipe.

No database connection crosses a fork (prepare): a connection shared by two
processes would mix their statements on one socket, and a child closing its
copy would end the parent's session. Each side opens its own. A fork is
safe only from a process running no other thread (alone); the expansion's
writer checks it, the sending children are forked after expansion by a run
that has no other thread.

A frame is its length (4 bytes, big-endian) and a pickled (kind, payload).
Only the parent and its own forked children read them, the same code on both
ends, so these pickles are trusted as nothing read from elsewhere would be.
"""

import os
import pickle
import struct
import sys
import threading

_HEADER = struct.Struct(">I")


# Every pipe end a run holds for its children, until closed. A child forked later closes those it
# has no use for: a sibling's copy of another child's write end would keep that child from ever
# reading the end of its input (and the parent from seeing a dead child's pipe close).
_lock = threading.Lock()
_ends = set()


def pipe():
    """os.pipe(), both ends known to the forks to come (close them with `close`)."""
    with _lock:
        read, write = os.pipe()
        _ends.update((read, write))
    return read, write


def close(fd):
    with _lock:
        _ends.discard(fd)
    os.close(fd)


def fork(keep=()):
    """os.fork() while no pipe is half made; in the child, every known pipe end but `keep` is closed.

    Returns what os.fork() does (0 in the child).
    """
    with _lock:
        pid = os.fork()
        if pid == 0:
            for fd in _ends.difference(keep):
                try:
                    os.close(fd)
                except OSError:
                    pass
            _ends.intersection_update(keep)
    return pid


def alone():
    """Whether this process runs one thread only, the one asking: the only state it is safe to fork in.

    A child gets a copy of every lock as it was, and no thread to release one another thread held
    (in libpq, the resolver, the allocator): its first connection can then wait for ever.
    """
    return threading.active_count() == 1


def prepare():
    """Just before os.fork(): no connection of ours for the child to inherit, no output for it to repeat."""
    from django.db import connections

    connections.close_all()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child would write the parent's pending output once more


def frame(kind, payload=None):
    data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def write_all(fd, data):
    """Write all of `data` to `fd` (a pipe takes at most its capacity per write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Reader:
    """Frames out of the bytes read so far; a frame split across reads waits for the rest."""

    def __init__(self):
        self._buffer = bytearray()  # appended in place: a frame of megabytes comes in many reads

    def feed(self, data):
        """The (kind, payload) of every frame completed by `data`, in order."""
        buffer = self._buffer
        buffer += data
        frames, start = [], 0
        with memoryview(buffer) as view:  # released before the buffer is cut
            while len(buffer) - start >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, start)
                end = start + _HEADER.size + size
                if len(buffer) < end:
                    break
                frames.append(pickle.loads(view[start + _HEADER.size : end]))
                start = end
        del buffer[:start]
        return frames


def waitpid(pid):
    while True:
        try:
            return os.waitpid(pid, 0)
        except ChildProcessError:
            return pid, 0
        except InterruptedError:  # pragma: no cover - Python retries on EINTR itself
            continue


def died(status):
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"ended (exit {os.waitstatus_to_exitcode(status)}) without a result"
