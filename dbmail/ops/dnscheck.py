"""DNS checks of a sender domain: SPF, the DKIM selector records, DMARC; each judged pass, warn or fail.

What can be judged from DNS alone is judged; what cannot is said:

- SPF: exactly one `v=spf1` TXT record, naming at least one way mail may be
  sent (ip4:, ip6:, a, mx, include:, exists:, redirect=) and ending in -all
  or ~all. Whether it covers the address our MTA sends from cannot be known
  here (that is the address receivers see, behind any NAT or relay), so it
  is not checked.
- DKIM: for each published key (dbmail.ops.dkimkeys), the TXT record at
  `<selector>._domainkey.<domain>` carries our public key.
- DMARC: exactly one `v=DMARC1` record at `_dmarc.<domain>` with a policy
  (p=); p=none only asks for reports, so it is a warning. A subdomain
  without one is covered by its parent's, which is looked up too.

Every fail and warn that a record would fix comes with the record to
publish. The resolver is dnspython's, each lookup bounded by
DBMAIL_DNS_TIMEOUT; check() takes any object with dnspython's
`resolve(name, "TXT")` (tests pass a stub: nothing leaves the machine).
"""

import re
from dataclasses import dataclass, field

import dns.exception
import dns.resolver

from dbmail.conf import settings as conf
from dbmail.exceptions import DNSLookupFailed as LookupFailed
from dbmail.ops import dkimkeys

PASS, WARN, FAIL = "pass", "warn", "fail"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}
_SPF_MECHANISM = re.compile(r"[+?~-]?(ip4:|ip6:|a\b|a:|a/|mx\b|mx:|mx/|include:|exists:|ptr\b|ptr:)", re.IGNORECASE)
_SPF_ALL = re.compile(r"([+?~-]?)all", re.IGNORECASE)


@dataclass
class Verdict:
    check: str  # "SPF", "DKIM s202611", "DMARC"
    status: str  # PASS, WARN or FAIL
    detail: str
    found: list = field(default_factory=list)  # the records as published
    publish: str = ""  # a zone-file line that would fix it, when one would


@dataclass
class DomainReport:
    domain: str
    verdicts: list

    @property
    def status(self):
        return max((v.status for v in self.verdicts), key=_RANK.__getitem__, default=PASS)

    @property
    def failed(self):
        return [v for v in self.verdicts if v.status == FAIL]


def make_resolver():
    resolver = dns.resolver.Resolver()
    resolver.timeout = resolver.lifetime = conf.DBMAIL_DNS_TIMEOUT
    return resolver


def txt_records(resolver, name):
    """The TXT records at `name`, each as one string (its character-strings joined); [] when there are none."""
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        raise LookupFailed(f"no answer for {name} within {conf.DBMAIL_DNS_TIMEOUT:g} s") from None
    except dns.exception.DNSException as exc:
        raise LookupFailed(f"{name}: {exc.__class__.__name__}: {exc}") from None
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


def _txt_line(name, value):
    return f"{name}. IN TXT " + " ".join(f'"{s}"' for s in dkimkeys.txt_strings(value))


def tags(record):
    """A DKIM or DMARC record's tag=value pairs (tag names lower-case, values without spaces)."""
    result = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            result.setdefault(name.strip().lower(), re.sub(r"\s+", "", value))
    return result


def check_spf(domain, resolver):
    suggestion = _txt_line(domain, "v=spf1 mx ~all")
    try:
        found = txt_records(resolver, domain)
    except LookupFailed as exc:
        return Verdict("SPF", WARN, f"cannot look up: {exc}")
    spf = [r for r in found if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]
    if not spf:
        return Verdict(
            "SPF", FAIL, "no SPF record: receivers cannot tell which servers may send as the domain "
            "(the suggestion allows the domain's MX hosts; add ip4:/include: for the servers that send its mail)",
            publish=suggestion,
        )  # fmt: skip
    if len(spf) > 1:
        return Verdict(
            "SPF", FAIL, f"{len(spf)} SPF records: receivers treat that as an error; merge them into one", spf
        )
    terms = spf[0].split()[1:]
    mechanisms = [t for t in terms if _SPF_MECHANISM.match(t)]
    redirect = next((t for t in terms if t.lower().startswith("redirect=")), None)
    all_term = next((t for t in reversed(terms) if _SPF_ALL.fullmatch(t)), None)
    note = "the sending server's address is not checked here (only receivers see it)"
    if not mechanisms and not redirect:
        return Verdict("SPF", FAIL, "it names no server that may send (no ip4, ip6, a, mx or include)", spf)
    if all_term is None:
        if redirect:
            return Verdict("SPF", WARN, f"the policy is delegated ({redirect}), not followed here; {note}", spf)
        return Verdict(
            "SPF", WARN, f"it does not end in -all or ~all, so other servers are merely neutral; {note}", spf
        )
    qualifier = _SPF_ALL.fullmatch(all_term).group(1)
    if qualifier in ("", "+"):
        return Verdict("SPF", FAIL, f"it ends in {all_term}: any server may send as the domain", spf)
    if qualifier == "?":
        return Verdict("SPF", WARN, f"it ends in {all_term}: other servers are merely neutral; use ~all or -all", spf)
    return Verdict(
        "SPF", PASS, f"one record, naming {', '.join(mechanisms or [redirect])}, ending in {all_term}; {note}", spf
    )


def check_dkim(domain, resolver, keys=None):
    keys = dkimkeys.active_keys(domain) if keys is None else keys
    if not keys:
        return [
            Verdict("DKIM", FAIL, f"no DKIM key: mail from {domain} goes out unsigned (dbmail_dkim generate {domain})")
        ]
    return [_check_key(key, resolver, signing=(n == 0)) for n, key in enumerate(keys)]


def _check_key(key, resolver, signing):
    name = dkimkeys.record_name(key)
    label = f"DKIM {key.selector}" + (" (signs)" if signing else " (published, no longer signs)")
    publish = dkimkeys.zone_line(key)
    try:
        found = txt_records(resolver, name)
    except LookupFailed as exc:
        return Verdict(label, WARN, f"cannot look up: {exc}")
    records = [r for r in found if "p=" in r.replace(" ", "")]
    if not records:
        return Verdict(label, FAIL, f"no DKIM record at {name}: receivers cannot check the signature", found, publish)
    ours = [r for r in records if tags(r).get("p") == key.public_key and tags(r).get("k", "rsa") == key.key_type]
    if ours and len(records) == 1:
        return Verdict(label, PASS, f"{name} publishes our public key", records)
    if ours:
        return Verdict(
            label, WARN, f"{name} has {len(records)} key records; receivers may use any one", records, publish
        )
    if any(tags(r).get("p") == "" for r in records):
        return Verdict(label, FAIL, f"{name} revokes the key (p= is empty)", records, publish)
    return Verdict(label, FAIL, f"{name} publishes another key than ours", records, publish)


def check_dmarc(domain, resolver):
    suggestion = _txt_line(f"_dmarc.{domain}", "v=DMARC1; p=none")
    inherited = False
    try:
        records, where = _dmarc_records(resolver, domain), f"_dmarc.{domain}"
        if not records and domain.count(".") >= 2:  # a subdomain falls under its parent's policy
            parent = domain.partition(".")[2]
            records, where, inherited = _dmarc_records(resolver, parent), f"_dmarc.{parent}", True
    except LookupFailed as exc:
        return Verdict("DMARC", WARN, f"cannot look up: {exc}")
    if not records:
        return Verdict(
            "DMARC", FAIL, "no DMARC record: large receivers (Gmail, Yahoo) require one of bulk senders; "
            "start with p=none (add rua=mailto:... to get reports), then move to quarantine",
            publish=suggestion,
        )  # fmt: skip
    if len(records) > 1:
        return Verdict("DMARC", FAIL, f"{len(records)} DMARC records at {where}: receivers then apply none", records)
    values = tags(records[0])
    # A parent's record rules its subdomains by sp= when it has one, else by p=.
    policy = values.get("sp") if inherited and "sp" in values else values.get("p", "")
    if policy.lower() not in ("none", "quarantine", "reject"):
        return Verdict(
            "DMARC", FAIL, f"{where} has no valid policy (p=none, quarantine or reject)", records, suggestion
        )
    if policy.lower() == "none":
        return Verdict("DMARC", WARN, f"{where}: p=none only asks for reports; nothing is refused", records)
    return Verdict("DMARC", PASS, f"{where}: policy {policy.lower()}", records)


def _dmarc_records(resolver, domain):
    return [r for r in txt_records(resolver, f"_dmarc.{domain}") if r.replace(" ", "").lower().startswith("v=dmarc1")]


def check(domain, resolver=None):
    """The report for one domain: SPF, then each published DKIM key, then DMARC."""
    domain = dkimkeys.clean_domain(domain)
    resolver = resolver or make_resolver()
    return DomainReport(
        domain, [check_spf(domain, resolver), *check_dkim(domain, resolver), check_dmarc(domain, resolver)]
    )
