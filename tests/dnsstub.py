"""A stub DNS for tests: canned TXT answers, so nothing leaves the machine.

    dns = StubDNS()
    dns.txt("example.org", "v=spf1 mx -all")
    dns.publish(key)                      # a DkimKey's record, as dbmail_dkim prints it
    dns.timeout("slow.example.org")       # that name never answers in time
    dnscheck.check("example.org", resolver=dns)     # dnspython's Resolver.resolve(name, "TXT")
    dkim.verify(message, dnsfunc=dns.dkim_lookup)   # dkimpy's lookup of a selector record
    signed = dns.sign(message, "example.org")       # DKIM-signed with a test key whose record is published

The `stub_dns` fixture (tests/conftest.py) makes it the resolver dbmail.ops.dnscheck.make_resolver gives.

A name with no records answers NXDOMAIN, as DNS does.
"""

from types import SimpleNamespace

import dns.exception
import dns.resolver

from dbmail.ops import dkimkeys
from dbmail.send import dkim


def _name(name):
    name = name.decode("ascii") if isinstance(name, bytes) else str(name)
    return name.rstrip(".").lower()


class StubDNS:
    def __init__(self):
        self.records = {}  # name -> [[character-string, ...], ...]
        self.slow = set()
        self.queries = []
        self.keys = {}  # (domain, selector) -> dbmail.send.dkim.SigningKey

    def txt(self, name, *values):
        """Add TXT records at `name`; each value is one string or a list of the strings a record is cut into."""
        records = self.records.setdefault(_name(name), [])
        for value in values:
            records.append([value] if isinstance(value, str) else list(value))
        return self

    def publish(self, key):
        """The DKIM record of `key` (a DkimKey), cut into 255-byte strings as it is published."""
        return self.txt(dkimkeys.record_name(key), dkimkeys.txt_strings(dkimkeys.txt_value(key)))

    def timeout(self, name):
        self.slow.add(_name(name))
        return self

    # dnspython's interface (dbmail.ops.dnscheck)
    def resolve(self, name, rdtype="A", **kwargs):
        name = _name(name)
        self.queries.append((name, rdtype))
        if name in self.slow:
            raise dns.exception.Timeout()
        if rdtype != "TXT" or name not in self.records:
            raise dns.resolver.NXDOMAIN()
        return [SimpleNamespace(strings=[s.encode("ascii") for s in record]) for record in self.records[name]]

    # dkimpy's interface: the first TXT record at `name`, its strings joined, or None
    def dkim_lookup(self, name, timeout=5):
        records = self.records.get(_name(name))
        return "".join(records[0]).encode("ascii") if records else None

    # Test DKIM keys, made without the database (an Ed25519 pair is made in microseconds)
    def signing_key(self, domain, selector="t1", algorithm="ed25519"):
        """A key for `domain` whose record this stub publishes (made once per domain and selector)."""
        if (domain, selector) not in self.keys:
            kind = "ed25519" if algorithm == "ed25519" else "rsa"
            material = dkimkeys.new_key_material(f"{kind}-sha256")
            self.txt(
                f"{selector}._domainkey.{domain}", dkimkeys.txt_strings(f"v=DKIM1; k={kind}; p={material.public_key}")
            )
            self.keys[domain, selector] = dkim.SigningKey(
                domain.encode(), selector.encode(), f"{kind}-sha256".encode(), material.private_key.encode()
            )
        return self.keys[domain, selector]

    def sign(self, message, domain, selector="t1", algorithm="ed25519"):
        """`message` with a DKIM-Signature of `domain` in front, as the site signs its own (dbmail.send.dkim):
        relaxed/relaxed, no l=, From signed (and oversigned)."""
        signed = dkim.sign_with(self.signing_key(domain, selector, algorithm), message)
        field = signed[: len(signed) - len(message)]
        return (field if b"\r\n" in message else field.replace(b"\r\n", b"\n")) + message  # the message's line ends
