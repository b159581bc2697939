"""Addresses pasted into the compose form: any mix of lines, commas, semicolons and spaces.

    ann@example.org, bob@example.org; cat@example.org dan@example.org
    Bob Smith <bob@example.org>
    "Smith, Bob" <bob@example.org>
    Eve Adams	eve@example.org          (two columns pasted from a spreadsheet)

Entries are split on newlines, commas and semicolons (not inside quotes or
<...>), then on whitespace: every word with an @ is an address, and the words
without one just before it are its name. A word that is neither (a name with
no address after it, `foo@`, `@example.org`) is a bad entry, reported with its
line number like a bad CSV row; the good ones are kept in order.
"""

from dataclasses import dataclass, field

from dbmail.content import recipients


@dataclass
class Pasted:
    rows: list = field(default_factory=list)  # {"email": ..., "name": ...} in the order pasted
    bad: list = field(default_factory=list)  # (line number, message), as dbmail.content.csvmerge reports rows


def parse(text):
    parsed = Pasted()
    for number, line in enumerate((text or "").splitlines(), 1):
        for entry in _entries(line):
            for name, address in _addresses(entry, parsed.bad, number):
                address = recipients.normalise_address(address)
                error = recipients.address_error(address)
                if error:
                    parsed.bad.append((number, error))
                else:
                    parsed.rows.append({"email": address, "name": name} if name else {"email": address})
    return parsed


def _entries(line):
    """The line cut at commas and semicolons that are outside quotes and angle brackets."""
    entries, current, quoted, angle = [], [], False, False
    for char in line:
        if char == '"' and not angle:
            quoted = not quoted
        elif char == "<" and not quoted:
            angle = True
        elif char == ">" and not quoted:
            angle = False
        if char in ",;" and not quoted and not angle:
            entries.append("".join(current))
            current = []
        else:
            current.append(char)
    entries.append("".join(current))
    return [e.strip() for e in entries if e.strip()]


def _addresses(entry, bad, number):
    """(name, address) pairs in one entry; words that are no address and name none go to `bad`."""
    if "<" in entry and entry.rstrip().endswith(">"):
        name, _, address = entry.rstrip()[:-1].rpartition("<")
        return [(_unquote(name), address.strip())]
    pairs, words = [], []
    for word in entry.split():
        if "@" in word:
            pairs.append((_unquote(" ".join(words)), word.strip("<>")))
            words = []
        else:
            words.append(word)
    if words:  # trailing words with no address after them
        bad.append((number, f"not an email address: {' '.join(words)!r}"))
    return pairs


def _unquote(name):
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"')
    return name.strip()
