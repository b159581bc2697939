"""What a DKIM signature costs per email: one command, a table, and bench/results.json's `dkim` key.

    python bench/dkim_cost.py [--messages N]

Signs the same kind of message the send benchmark sends (a ~2 kB text email
with List-Unsubscribe and Feedback-ID headers, as dbmail.send.mime writes
it, a fresh one per signature since every recipient's differs) with:

- rsa-sha256, 2048 bits, as dkimpy does it alone (its RSA in pure Python);
- rsa-sha256, 2048 bits, as dbmail.send.dkim does it (OpenSSL for the RSA step);
- ed25519-sha256, as dbmail.send.dkim does it;

and, for scale, the unsigned composition itself. Each figure is the mean
wall time of one signature on one core; "per core" is its inverse. No
database and no network: the keys are made in memory, and each kind's first
signature is verified against them before timing. Runs in well under a
minute. Other keys of bench/results.json are kept.
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")  # never opened: nothing here reads the database

import django  # noqa: E402

django.setup()

import dkim as dkimpy  # noqa: E402
from dkim import crypto as dkimpy_crypto  # noqa: E402

from bench import results as bench_results  # noqa: E402
from dbmail.models import DkimKey, TextOfEmail  # noqa: E402
from dbmail.ops import dkimkeys  # noqa: E402
from dbmail.send import dkim, mime  # noqa: E402

TEXT = (
    "Dear Ann Smith,\n\n"
    + "This is the monthly letter of mailsite. " * 4
    + "\n\n"
    + "The timetable for the coming term is now online, and the library keeps its longer opening hours "
    "until the end of the month. Please bring back any books you borrowed before the holidays. "
    * 6
    + "\n\nYour account: ann (ann@example.net)\nTo stop receiving these letters: "
    "https://mail.example.org/unsubscribe/0123456789abcdefghijklmnop/\n"
)


def message(n):
    """The bytes of the n-th recipient's email, unsigned."""
    email = TextOfEmail(
        pk=n + 1,
        to_address=f"user{n}@example.net",
        to_name=f"User {n}",
        from_header="The Office <office@example.org>",
        envelope_sender="office@example.org",
        subject=f"News from mailsite for User {n}",
        text=TEXT.replace("Ann Smith", f"User {n}"),
        message_id=f"<{time.time_ns()}.{n}@example.org>",
        headers={
            "List-Unsubscribe": f"<https://mail.example.org/u/{n:026d}/>, <mailto:unsubscribe+{n:026d}@example.org>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Feedback-ID": "42:1:mailsite:mailsite",
        },
    )
    return mime.compose(email, sign=False)


def signing_key(algorithm, bits=2048):
    material = dkimkeys.new_key_material(algorithm, bits)
    row = DkimKey(domain="example.org", selector="bench", algorithm=algorithm, **vars(material))
    return dkim.SigningKey.of(row), dkimkeys.txt_value(row).encode()


def check(key, record, data):
    signed = dkim.sign_with(key, data)
    if not dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: record):
        raise SystemExit(f"{key.algorithm.decode()}: the signature does not verify")


def per_message(fn, datas):
    started = time.perf_counter()
    for data in datas:
        fn(data)
    return (time.perf_counter() - started) / len(datas) * 1e6


class PureDkimpy:
    """dkimpy exactly as it ships: its own RSA and a key parse per signature."""

    def __enter__(self):
        self.saved = dkimpy.parse_pem_private_key, dkimpy.RSASSA_PKCS1_v1_5_sign
        dkimpy.parse_pem_private_key = dkimpy_crypto.parse_pem_private_key
        dkimpy.RSASSA_PKCS1_v1_5_sign = dkimpy_crypto.RSASSA_PKCS1_v1_5_sign

    def __exit__(self, *exc):
        dkimpy.parse_pem_private_key, dkimpy.RSASSA_PKCS1_v1_5_sign = self.saved


def main(argv=None):
    parser = argparse.ArgumentParser(description="DKIM signing cost per email")
    parser.add_argument("--messages", type=int, default=2000, help="signatures per fast kind (pure RSA: a tenth)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args(argv)

    datas = [message(n) for n in range(args.messages)]
    slow = datas[: max(20, args.messages // 10)]
    rsa, rsa_record = signing_key(DkimKey.Algorithm.RSA)
    ed, ed_record = signing_key(DkimKey.Algorithm.ED25519)
    for key, record in ((rsa, rsa_record), (ed, ed_record)):
        check(key, record, datas[0])
    with PureDkimpy():
        check(rsa, rsa_record, datas[0])
        pure_us = per_message(lambda d: dkim.sign_with(rsa, d), slow)
    rsa_us = per_message(lambda d: dkim.sign_with(rsa, d), datas)
    ed_us = per_message(lambda d: dkim.sign_with(ed, d), datas)
    compose_us = per_message(lambda n: message(n), range(len(datas)))

    figures = {
        "message_bytes": len(datas[0]),
        "compose_us": round(compose_us, 1),
        "rsa2048_dkimpy_us": round(pure_us, 1),
        "rsa2048_us": round(rsa_us, 1),
        "ed25519_us": round(ed_us, 1),
        "per_core_msgs_s": {
            "rsa2048_dkimpy": round(1e6 / pure_us),
            "rsa2048": round(1e6 / rsa_us),
            "ed25519": round(1e6 / ed_us),
        },
        "load_average": round(os.getloadavg()[0], 2),
    }
    rows = [
        ("compose (unsigned, for scale)", compose_us, len(datas)),
        ("rsa-sha256 2048, dkimpy alone", pure_us, len(slow)),
        ("rsa-sha256 2048, as dbmail signs", rsa_us, len(datas)),
        ("ed25519-sha256, as dbmail signs", ed_us, len(datas)),
    ]
    print(f"DKIM signing cost per email ({figures['message_bytes']} bytes; load {figures['load_average']})")
    print(f"{'':36} {'µs/email':>10} {'emails/s/core':>14} {'n':>6}")
    for name, us, n in rows:
        print(f"{name:36} {us:10.1f} {1e6 / us:14,.0f} {n:6}")

    bench_results.update(args.results, {"dkim": figures})  # the other benchmarks' keys stay


if __name__ == "__main__":
    main()
