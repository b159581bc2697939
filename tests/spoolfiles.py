"""Writing spool files in tests the way a well-behaved producer does (hidden name, then rename)."""

import os
from pathlib import Path
from xml.sax.saxutils import escape


def item(
    address="boo@hisorhermail.com",
    sender="foo@example.com",
    topic="Upomnienie",
    content="Prosimy o zwrot.",
    time="17.10.2011 00:00:11",
):
    return {"fld_time": time, "fld_sender": sender, "fld_address": address, "fld_topic": topic, "fld_content": content}


def xml(*items):
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<list>\n']
    for fields in items:
        parts.append("\t<item>\n")
        parts.extend(f"\t\t<{k}>{escape(v)}</{k}>\n" for k, v in fields.items())
        parts.append("\t</item>\n")
    parts.append("</list>\n")
    return "".join(parts).encode("utf-8")


def drop(directory, name, data):
    """Write `data` as a hidden temporary file, then rename it into place (the producer convention)."""
    directory = Path(directory)
    temporary = directory / f".{name}.tmp"
    temporary.write_bytes(data)
    os.replace(temporary, directory / name)
    return directory / name


def age(path, days):
    """Make `path` look `days` old."""
    import time

    then = time.time() - days * 86400
    os.utime(path, (then, then))
