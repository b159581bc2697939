from django.core.management.base import BaseCommand, CommandError

from dbmail import audit
from dbmail.content import domains
from dbmail.exceptions import DkimError
from dbmail.models import DkimKey
from dbmail.ops import dkimkeys, dnscheck

_BY = "manage.py dbmail_dkim"  # who: whoever runs commands on the host


class Command(BaseCommand):
    help = (
        "DKIM keys and DNS checks: generate, list, rotate, retire, dns (the records to publish), check "
        "(SPF, DKIM and DMARC as DNS has them). Private keys are never printed."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        generate = sub.add_parser("generate", help="Make a key for DOMAIN; it signs the domain's mail from now on.")
        generate.add_argument("domain")
        generate.add_argument("--selector", help="Default: s<YYYYMM> (rsa) or e<YYYYMM> (ed25519).")
        generate.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
        generate.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048).")
        sub.add_parser("list", help="Every key: domain, selector, algorithm, state, dates.")
        rotate = sub.add_parser("rotate", help="A new key for DOMAIN signs from now on; the old stays published.")
        rotate.add_argument("domain")
        retire = sub.add_parser("retire", help="Stop publishing a key (then remove its DNS record).")
        retire.add_argument("domain")
        retire.add_argument("selector")
        dns = sub.add_parser("dns", help="The TXT records to publish for DOMAIN's keys.")
        dns.add_argument("domain")
        check = sub.add_parser("check", help="Look up and judge SPF, DKIM and DMARC (default: every sender domain).")
        check.add_argument("domains", nargs="*", metavar="DOMAIN")

    def handle(self, *args, **opts):
        try:
            getattr(self, f"_{opts['action']}")(opts)
        except DkimError as exc:
            raise CommandError(str(exc)) from exc

    def _generate(self, opts):
        key = dkimkeys.generate(
            opts["domain"], selector=opts["selector"], algorithm=opts["algorithm"], bits=opts["bits"]
        )
        audit.record(None, "generate DKIM key", key, detail=_BY)
        self._made(key, f"made {key.algorithm} key {key.selector} for {key.domain}; it signs from now on.")

    def _rotate(self, opts):
        key = dkimkeys.rotate(opts["domain"])
        audit.record(None, "rotate DKIM key", key, detail=_BY)
        self._made(
            key,
            f"made {key.algorithm} key {key.selector} for {key.domain}; it signs from now on. The older key stays "
            "published: retire it once this record is in DNS and a few days have passed.",
        )

    def _made(self, key, text):
        self.stdout.write(text)
        self.stdout.write("Publish this TXT record (the private key stays in the database and is never shown):")
        self.stdout.write(dkimkeys.zone_line(key))

    def _list(self, opts):
        keys = DkimKey.objects.order_by("domain", "-created_at", "-id")
        if not keys:
            self.stdout.write("no DKIM keys (dbmail_dkim generate DOMAIN makes one)")
        signing = set()
        for key in keys:
            if key.active and key.domain not in signing:
                signing.add(key.domain)
                state = "signs"
            elif key.active:
                state = "published"
            else:
                state = f"retired {key.retired_at:%Y-%m-%d}"
            self.stdout.write(
                f"{key.domain:<30} {key.selector:<16} {key.algorithm:<15} {state:<18} made {key.created_at:%Y-%m-%d}"
            )

    def _retire(self, opts):
        key = dkimkeys.retire(opts["domain"], opts["selector"])
        audit.record(None, "retire DKIM key", key, detail=_BY)
        self.stdout.write(f"retired {key}: it no longer signs; remove its TXT record from DNS.")

    def _dns(self, opts):
        domain = dkimkeys.clean_domain(opts["domain"])
        keys = dkimkeys.active_keys(domain)
        if not keys:
            raise CommandError(f"{domain} has no published DKIM key (dbmail_dkim generate {domain} makes one)")
        for key in keys:
            self.stdout.write(dkimkeys.zone_line(key))

    def _check(self, opts):
        names = opts["domains"] or domains.sender_domains()
        failed = []
        for name in names:
            report = dnscheck.check(name)
            self.stdout.write(f"{report.domain}: {report.status.upper()}")
            for verdict in report.verdicts:
                self.stdout.write(f"  {verdict.status.upper():<4}  {verdict.check}: {verdict.detail}")
                for record in verdict.found:
                    self.stdout.write(f"        found:   {record}")
                if verdict.publish:
                    self.stdout.write(f"        publish: {verdict.publish}")
            failed += [f"{report.domain} {v.check}" for v in report.failed]
        if failed:
            raise CommandError(f"DNS check failed: {', '.join(failed)}")
