"""International addresses: which ones are valid, and how they are written on the wire.

- A domain with non-ASCII letters (an IDN, ann@bücher.example) always goes
  out as A-labels (ann@xn--bcher-kva.example; IDNA 2008 with the UTS #46
  mapping, from the `idna` package), in the envelope and in the headers,
  so no server needs to know about IDN.
- A local part with non-ASCII letters (用户@example.org) can only go out
  with SMTPUTF8 (RFC 6531): the envelope and the address headers then carry
  it as UTF-8 (RFC 6532). A server that does not offer SMTPUTF8 cannot take
  it at all (NeedsSMTPUTF8).
- Display names with non-ASCII letters become RFC 2047 encoded words, with
  or without SMTPUTF8.
- A domain literal (ann@[192.0.2.1], ann@[IPv6:...]) is refused: it would make
  the MTA connect to whatever host the address names, internal ones included,
  and no one a bulk sender writes to needs one.

One mailbox can be written many ways; `mailbox_key` gives all of them one
key, which is what the suppression list stores and what every check of it
compares (dbmail.models.Suppression). A request's emails store each address
in one spelling per key, `delivery_spelling` (the same, with the case of an
ASCII local part kept), so the database's one-email-per-address constraint on
lower(to_address) sees every spelling of a mailbox as the same one. That
spelling goes into the To header and the envelope (through `wire`, as any).
"""

import functools
import re
import unicodedata
from email.utils import formataddr, getaddresses, specialsre

import idna
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from dbmail.exceptions import AddressError, NeedsSMTPUTF8

__all__ = [
    "AddressError",
    "NeedsSMTPUTF8",
    "a_label",
    "delivery_spelling",
    "display",
    "error",
    "header",
    "key_fragment",
    "mailbox_key",
    "needs_smtputf8",
    "readable",
    "wire",
]

# The common address, which needs none of the work below (checked on every message sent).
_PLAIN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")
_ASCII_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_BREAKS = re.compile(r"[\r\n<>]")
# A subset of what Django's validate_email accepts (dot-atom local part; LDH labels and a TLD of letters),
# so the common address is judged by one match: expansion checks every recipient, 30,000 a second.
# tests/test_addresses.py checks over generated input that this never accepts what Django refuses.
_SURELY_VALID = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
# An address whose key is itself lower-cased: ASCII dot-atom-ish local part, no quotes, no trailing dot.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# Such an address whose domain is lower-case already: its own delivery spelling.
_PLAIN_SPELLING = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*")
# RFC 5321 4.1.2: inside a quoted local part, any printable ASCII character or space, \" and \\ escaped.
_QUOTED_LOCAL = re.compile(r'"(?:[ !#-\[\]-~]|\\[ -~])*"')


def a_label(domain):
    """`domain` in A-labels (xn--...); AddressError if it is no valid IDN."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise AddressError(f"the domain {domain!r} is not a valid international domain name ({exc})") from None


def needs_smtputf8(address):
    """Whether `address` (a bare address) has a UTF-8 local part."""
    return not address.rpartition("@")[0].isascii()


def wire(address, smtputf8=False):
    """`address` as it goes into MAIL FROM, RCPT TO and address headers.

    The domain in A-labels; a UTF-8 local part only when `smtputf8` (the
    server offers it and the message uses it), NeedsSMTPUTF8 otherwise.
    """
    if _PLAIN.fullmatch(address):
        return address
    address = address.strip()
    if not address:
        raise AddressError("no recipient address (the address is empty)")
    local, at, domain = address.rpartition("@")
    unquoted_space = not local.startswith('"') and any(c.isspace() for c in local)
    if not at or not local or not domain or _BREAKS.search(address) or unquoted_space or domain != domain.strip():
        raise AddressError(f"invalid address {address!r}")
    if not local.isascii() and not smtputf8:
        raise NeedsSMTPUTF8(f"the server does not offer SMTPUTF8, which the address {address!r} needs (RFC 6531)")
    return f"{local}@{a_label(domain)}"


def display(name, address):
    """A header's `Name <address>` for an address from wire(): the name quoted or RFC 2047-encoded."""
    name = " ".join((name or "").split())
    if not name:
        return address
    if name.isascii() and not specialsre.search(name):
        return f"{name} <{address}>"  # what formataddr writes for such a name, without its checks (once a message)
    # email.utils quotes or encodes the name but insists on an ASCII address: give it a stand-in.
    return formataddr((name, "a@a"), charset="utf-8")[: -len("<a@a>")] + f"<{address}>"


def header(value, smtputf8=False):
    """A stored address header ("Name <addr>, ...") as it goes out; unchanged when it is ASCII."""
    if value.isascii():
        return value
    pairs = getaddresses([value])
    if not pairs or any(not addr for _, addr in pairs):
        raise AddressError(f"invalid address header {value!r}")
    return ", ".join(display(name, wire(addr, smtputf8)) for name, addr in pairs)


def header_needs_smtputf8(value):
    return not value.isascii() and any(needs_smtputf8(addr) for _, addr in getaddresses([value]))


def mailbox_key(address):
    """The one key of the mailbox `address` names, however it is written; never raises.

    Spellings of one mailbox get one key:
    - surrounding white space, angle brackets and a display name go
      ("Anna <anna@x.org>", " <anna@x.org> ");
    - the domain is written in lower-case A-labels (IDNA 2008 with the UTS #46
      mapping, as `wire` sends it), without a trailing dot: bücher.example,
      XN--BCHER-KVA.example, fullwidth ｂüｃｈｅｒ．example and
      xn--bcher-kva.example. are all xn--bcher-kva.example;
    - a quoted local part that needs no quotes loses them ("anna"@x.org is
      anna@x.org, RFC 5321 4.1.2), one that needs them keeps them, with only the
      escapes it needs ("anna smith"@x.org stays a mailbox of its own);
    - the local part is lower-cased (and a UTF-8 one put in Unicode NFC).
      RFC 5321 lets a server tell Anna@ from anna@, but none we know of does,
      and a person who unsubscribed as Anna@ must not get mail as anna@: the
      suppression list has always compared lower-cased addresses, and still does.

    What is not an address at all (no @) keys as itself, trimmed and lower-cased.
    """
    if _PLAIN_KEY.fullmatch(address or ""):
        return address.lower()  # the common address: one match (expansion keys every recipient)
    return _canonical(address, fold=True)


def delivery_spelling(address):
    """The one spelling of the mailbox `address` names that a request's email stores; never raises.

    mailbox_key's form (no display name or angle brackets, the domain in
    lower-case A-labels, which is how it goes on the wire anyway, no quotes or
    escapes the local part does not need) with the case of an ASCII local part
    kept, as the owner wrote it. So lower(spelling) is the mailbox key, and the
    unique index on (request, lower(to_address)) (dbmail.models.TextOfEmail)
    takes one email per mailbox, however the recipients spelled it and in
    whichever chunk of an expansion they come. A UTF-8 local part is written as
    its key (NFC, lower-cased): how PostgreSQL's lower() treats non-ASCII letters
    depends on the database's collation (under "C", not at all), so only a local
    part lower-cased already is sure to have lower(spelling) == key.
    """
    if _PLAIN_SPELLING.fullmatch(address or ""):
        return address  # the common address, as expansion has it (recipients.normalise_address): one match
    if _PLAIN_KEY.fullmatch(address or ""):
        local, _, domain = address.rpartition("@")
        return f"{local}@{domain.lower()}"
    return _canonical(address, fold=False)


def _canonical(address, fold):
    """mailbox_key (`fold`) or delivery_spelling (not `fold`) of an address past their quick paths."""
    text = (address or "").strip()
    if text.endswith(">") and "<" in text:
        text = _angle_addr(text)
    local, at, domain = text.rpartition("@")
    if not at:
        return text.lower() if fold or not text.isascii() else text
    return f"{_local_key(local, fold)}@{_domain_key(domain)}"


def readable(address):
    """`address` as people read it: a domain's A-labels (xn--bcher-kva) shown as their letters (bücher).

    For pages only (the comm panel): what is stored and sent stays in A-labels.
    """
    local, at, domain = (address or "").rpartition("@")
    if not at or "xn--" not in domain:
        return address
    return f"{local}@{_u_labels(domain)}"


@functools.lru_cache(maxsize=1024)
def _u_labels(domain):
    try:
        return idna.decode(domain)
    except (idna.IDNAError, UnicodeError):  # not a valid IDN after all: shown as stored
        return domain


def key_fragment(term):
    """A search term (a whole address or a part: "bücher", "anna@Bücher") in the form mailbox keys are stored."""
    term = term.strip()
    return mailbox_key(term) if "@" in term else mailbox_key(f"x@{term}").partition("@")[2]


def _angle_addr(text):
    """What is inside the last <...> of "Name <addr>" outside quotes (a display name may hold < or ,)."""
    start, quoted, escaped = None, False, False
    for i, char in enumerate(text[:-1]):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "<" and not quoted:
            start = i
    return text[start + 1 : -1].strip() if start is not None else text


def _local_key(local, fold=True):
    """The local part as mailbox_key writes it; not `fold`: an ASCII one keeps its case (delivery_spelling)."""
    quoted = _QUOTED_LOCAL.fullmatch(local)
    local = re.sub(r"\\(.)", r"\1", local[1:-1]) if quoted else local.strip()
    if fold or not local.isascii():
        local = unicodedata.normalize("NFC", local.lower())
    if local and all(_utf8_atom(atom) for atom in local.split(".")):
        return local  # a dot-atom: the quotes, if any, changed nothing
    if quoted:
        return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return local  # no valid local part (a..b, a space): kept as written, lower-cased


_DOMAIN_TAIL = re.compile(r"[.\s]+\Z")


@functools.lru_cache(maxsize=4096)  # idna takes ~20 µs a domain; a list has few domains, many times each
def _domain_key(domain):
    domain = domain.strip()
    if domain.startswith("["):
        return domain.lower()  # a domain literal: refused by error(), keyed as written
    if not domain.isascii():
        try:
            domain = idna.encode(domain.rstrip(".。．｡"), uts46=True).decode("ascii")
        except UnicodeError:  # idna.IDNAError among them: no valid IDN, keyed as written
            domain = unicodedata.normalize("NFC", domain)
    # Trailing dots and white space in any mix ("x.org .", "0. ."): one strip of each would leave the
    # other at the end, and the key of the key would differ.
    return _DOMAIN_TAIL.sub("", domain.lower())


def error(address):
    """Why `address` cannot be mailed, in words; "" when it can.

    Django's validator knows ASCII local parts and IDN domains; a UTF-8
    local part (RFC 6531) is checked here: dot-separated atoms of ASCII
    atext and printable non-ASCII letters, at most 64 bytes; so is a quoted
    one (RFC 5321 allows a space in it, Django's validator does not). A
    domain literal is refused with its own reason (the module's docstring).
    """
    if len(address or "") <= 320 and _SURELY_VALID.fullmatch(address or ""):
        return ""
    invalid = f"invalid address {address!r}"
    local, at, domain = (address or "").rpartition("@")
    if at and domain.strip().startswith("["):
        return f"domain literal refused in {address!r}: mail goes to domain names only, never to a host named by its IP address"
    if at and _QUOTED_LOCAL.fullmatch(local) and len(local) <= 64:
        address = f"x@{domain}"  # RFC 5321's quoted local part (Django's refuses a space in one)
    if at and local and not local.isascii():
        if len(local.encode("utf-8")) > 64 or not all(_utf8_atom(atom) for atom in local.split(".")):
            return invalid
        address = f"x@{domain}"  # the domain is Django's to judge
    try:
        validate_email(address)
    except ValidationError:
        return invalid
    return ""


def _utf8_atom(atom):
    if not atom:
        return False
    for char in atom:
        if char.isascii():
            if not _ASCII_ATOM.fullmatch(char):
                return False
        elif unicodedata.category(char)[0] in "CZ":  # controls, format characters, spaces, unassigned
            return False
    return True
