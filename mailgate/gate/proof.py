"""Which of a post's sender addresses are proven, and how: what members-only and staff-only lists rest on.

The From header and the envelope sender are written by the sender, so anyone
can write a member's (DESIGN: identities are granted, never claimed). An
address counts only when one of these proves it:

- **DKIM, verified here** (dkimpy, the key from DNS through dbmail's resolver,
  each lookup bounded by DBMAIL_DNS_TIMEOUT): proves the From address when the
  signature verifies, its d= is the From domain or a parent of it at a dot
  boundary (relaxed alignment without a public-suffix list, so a single-label
  d= never aligns), it signs From, and it has no l= (a signature over part
  of the body lets anyone append to it). At most MAX_SIGNATURES are verified
  per message, each one DNS lookup.
- **Authentication-Results written by our own MTA** (RFC 8601): only fields
  whose authserv-id is in MAILGATE_TRUSTED_AUTHSERV_IDS, and only the topmost
  of those (the MTA adds its field above the ones the sender wrote, and must
  remove incoming ones with its own authserv-id: docs/mta.md). `dmarc=pass`
  with header.from the From domain, or `dkim=pass` with an aligned header.d
  (or header.i), proves From; `spf=pass` with smtp.mailfrom the envelope
  sender proves the envelope sender, and only it.

From is proven only when the message has one From field naming one address,
the one the gate's parser read, and a header section without a bare CR;
a DKIM signature proves it only when the verifier read that same From field.
Nothing here raises: a DNS failure, a
malformed signature or field is one more reason in `Proofs.failures`.
"""

import re
from dataclasses import dataclass, field
from email.utils import getaddresses

from dbmail.content.addresses import AddressError, a_label
from dbmail.exceptions import DNSLookupFailed
from mailgate.conf import settings as conf
from mailgate.gate import auth_results, parsing

MAX_SIGNATURES = 3  # DKIM signatures verified per message (each costs a DNS lookup and an RSA or Ed25519 check)
FROM_CHARS = 2000  # of a From value read for its addresses (one address needs far fewer)
_H_SPLIT = re.compile(rb"\s*:\s*")
_SPACE = re.compile(rb"\s+")
_BARE_CR = re.compile(rb"\r(?!\n)")
NOT_PROVEN = "no aligned DKIM signature or trusted Authentication-Results"


@dataclass
class Proofs:
    proven: dict = field(default_factory=dict)  # address -> how it was proven ("DKIM d=ourorg.example")
    failures: list = field(default_factory=list)  # why each way that was tried proved nothing

    def details(self, limit=6):
        """Why nothing was proven, for the moderator (not for notices: it quotes what the sender wrote)."""
        return "; ".join(self.failures[:limit]) + ("; ..." if len(self.failures) > limit else "")


def aligned(signing_domain, from_domain):
    """Whether a signing domain vouches for `from_domain`: the same, or a parent of it at a dot boundary."""
    signing_domain = signing_domain.strip().rstrip(".").lower()
    if "." not in signing_domain.strip("."):  # "example", "" or "." never align: no owner of a whole TLD
        return False
    return from_domain == signing_domain or from_domain.endswith("." + signing_domain)


def sole_from(parsed):
    """(the From address, "") when the message has one From field with one address, else ("", why not)."""
    values = parsed.raw_header("from")
    if len(values) != 1:
        return "", f"{len(values)} From fields" if values else "no From field"
    # A CR not followed by LF ends a line for this parser (as for the email package) but not for dkimpy
    # nor for many MTAs' filters, which split at LF: "X-A: x\rFrom: member@...\r\r\n" shows us a From
    # that they read as part of X-A, and ends our header section before the From they verified.
    _, end, _ = parsing.header_section(parsed.data)
    if _BARE_CR.search(parsed.data, 0, end):
        return "", "the header section has a bare CR (readers split its lines differently)"
    value = " ".join(values[0].split())  # unfolded, undecoded: a comma inside an encoded word stays hidden
    if len(value) > FROM_CHARS:
        return "", "the From field is too long to read"
    try:
        addresses = [address for _, address in getaddresses([value]) if address]
    except Exception:  # comments nested past the recursion limit
        addresses = []
    if len(addresses) != 1:
        return "", "the From field names several addresses" if len(addresses) > 1 else "the From field is unreadable"
    address = addresses[0].strip().lower()
    if "@" not in address or address != parsed.from_address:  # two readings of one field must agree
        return "", "the From field is unreadable"
    return address, ""


def _domain(address):
    try:
        return a_label(address.rpartition("@")[2].strip().rstrip(".").lower())
    except AddressError:
        return ""


def check(parsed, envelope_sender, wanted):
    """The Proofs for the sender addresses in `wanted` (those that would be allowed to post, lower-case).

    Only what can matter is tried: nothing for an address not in `wanted`,
    no DKIM once From is proven by our MTA's Authentication-Results.
    """
    proofs = Proofs()
    envelope_sender = (envelope_sender or "").strip().lower()
    from_address, from_domain = "", ""
    if parsed.from_address in wanted:
        from_address, problem = sole_from(parsed)
        from_domain = _domain(from_address) if from_address else ""
        if problem or not from_domain:
            proofs.failures.append(f"From not proven: {problem or 'its domain is not a valid domain name'}")
            from_address = ""
    spf_address = envelope_sender if envelope_sender in wanted else ""
    if not (from_address or spf_address):
        return proofs
    _from_authentication_results(parsed, from_address, from_domain, spf_address, proofs)
    if from_address and from_address not in proofs.proven:
        how = _from_dkim(parsed, from_domain, proofs.failures)
        if how:
            proofs.proven[from_address] = how
    return proofs


# --- Authentication-Results of our own MTA -------------------------------------------------------


def _from_authentication_results(parsed, from_address, from_domain, envelope_sender, proofs):
    trusted = {authserv_id.lower() for authserv_id in conf.MAILGATE_TRUSTED_AUTHSERV_IDS}
    if not trusted:
        return
    for value in parsed.raw_header("authentication-results"):
        found = auth_results.parse(value)
        if found is not None and found.authserv_id in trusted:
            break  # the topmost of ours: any below it may be the sender's own, written to look like ours
    else:
        proofs.failures.append(f"no Authentication-Results of {', '.join(sorted(trusted))}")
        return
    where = f"Authentication-Results of {found.authserv_id}"
    # The topmost of ours, but not as our MTA writes it: it hides those below and proves nothing itself.
    if not found.plain:
        proofs.failures.append(f"{where}: its authserv-id is not written plainly (a comment or quotes): not read")
        return
    if found.version != "1":  # RFC 8601 defines version 1 only: what another one says is unknown
        proofs.failures.append(f"{where}: version {found.version[:20]!r} is not read (only 1)")
        return
    before = len(proofs.proven)
    for result in found.results:
        if result.result != "pass":
            continue
        props = result.properties
        if from_address and result.method == "dmarc" and _domain(props.get("header.from", "")) == from_domain:
            proofs.proven.setdefault(from_address, f"{where}: dmarc=pass header.from={from_domain}")
        elif from_address and result.method == "dkim":
            signer = props.get("header.d") or props.get("header.i", "")  # header.i: [local]@domain
            signer = _domain(signer) if "@" in signer else _domain("@" + signer)
            if aligned(signer, from_domain):
                proofs.proven.setdefault(from_address, f"{where}: dkim=pass header.d={signer}")
        elif envelope_sender and result.method == "spf":
            if props.get("smtp.mailfrom", "").strip().lower() == envelope_sender:
                proofs.proven.setdefault(envelope_sender, f"{where}: spf=pass smtp.mailfrom={envelope_sender}")
    if len(proofs.proven) == before:
        proofs.failures.append(f"{where}: no pass for the From domain or the envelope sender")


# --- DKIM, verified here -------------------------------------------------------------------------


def _dns_lookup():
    """dkimpy's `dnsfunc`: the first TXT record at a name, through dbmail's resolver (the tests' stub seam)."""
    from dbmail.ops import dnscheck  # here: dnspython costs the start-up of every gate process otherwise

    resolver = dnscheck.make_resolver()

    def lookup(name, timeout=None):  # the resolver's own timeout (DBMAIL_DNS_TIMEOUT) bounds each lookup
        name = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        records = dnscheck.txt_records(resolver, name)
        return records[0].encode("utf-8") if records else None

    return lookup


def _lf(value):
    """A field value with its line breaks written one way (dkimpy writes CRLF for what came as LF)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text.replace("\r\n", "\n")


def _signature(value):
    """(d=, the tags) of a DKIM-Signature value; None when it is no tag list."""
    import dkim.util

    try:
        tags = dkim.util.parse_tag_value(value)
    except Exception:
        return None
    return _SPACE.sub(b"", tags.get(b"d", b"")).decode("ascii", "replace").lower().rstrip("."), tags


def _from_dkim(parsed, from_domain, failures):
    """How a DKIM signature proves From ("DKIM d=..."), or "" with the reasons added to `failures`."""
    if not parsed.raw_header("dkim-signature"):
        failures.append("no DKIM signature")
        return ""
    # dkimpy holds every line of the message as its own object: not for a flood of header fields or of
    # short lines, which the parser did not take apart either (parsing: `complete`).
    if parsed.fields_truncated or not parsed.complete:
        failures.append("DKIM not verified: the message is beyond the parser's limits")
        return ""
    import dkim  # here, not at the top: only members-only and staff-only lists pay for importing dkimpy

    try:
        verifier = dkim.DKIM(parsed.data)
    except Exception as exc:
        failures.append(f"DKIM not verified: the message is unreadable to the verifier ({type(exc).__name__})")
        return ""
    # The From a signature covers must be the From read here, whatever else splits lines differently:
    # dkimpy's one From field, its value (less the CRLF it adds to each line) the one the parser read.
    signed_from = [value for name, value in verifier.headers if name.lower() == b"from"]
    if len(signed_from) != 1 or _lf(signed_from[0][:-2]) != _lf(parsed.raw_header("from")[0]):
        failures.append("DKIM not verified: the verifier reads another From field than the gate")
        return ""
    lookup, verified = None, 0
    values = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    for index, value in enumerate(values):
        signature = _signature(value)
        if signature is None:
            failures.append("a DKIM signature is unreadable")
            continue
        domain, tags = signature
        shown = f"DKIM d={domain[:100]}"
        if not aligned(domain, from_domain):
            failures.append(f"{shown}: not the From domain {from_domain} or a parent of it")
            continue
        if b"l" in tags:
            failures.append(f"{shown}: signs only part of the body (l=)")
            continue
        if b"from" not in [h.lower() for h in _H_SPLIT.split(tags.get(b"h", b"").strip())]:
            failures.append(f"{shown}: does not sign From")
            continue
        if verified == MAX_SIGNATURES:
            failures.append(f"more than {MAX_SIGNATURES} aligned DKIM signatures: the rest not verified")
            break
        verified += 1
        lookup = lookup or _dns_lookup()
        try:
            if verifier.verify(idx=index, dnsfunc=lookup):
                return shown
            failures.append(f"{shown}: the signature does not verify")
        except DNSLookupFailed as exc:
            failures.append(f"{shown}: its key could not be looked up ({exc})")
        except Exception as exc:  # a malformed signature or key, a changed body: dkimpy's DKIMException, or worse
            if "body hash mismatch" in str(exc):
                failures.append(f"{shown}: the body was changed after signing")
            else:
                failures.append(f"{shown}: not verified ({type(exc).__name__}: {str(exc)[:100]})")
    return ""
