#!/usr/bin/python3
"""test_dane.py - DANE for outbound SMTP (RFC 7672) against a real validating resolver.

dnslab.ValidatingDNS signs the zone "test." (ldns-signzone, NSEC3) and serves
it from NSD next to "plain.test.", an unsigned child delegated from it without
a DS record (provably insecure); unbound validates, with the DS of "test." as
its trust anchor, and hamrd asks unbound ([dns] servers on 127.0.0.1: the AD
bit is trusted). [delivery] tls_policy is dane; only.plain.test is dane-only.
The MX hosts listen on their own loopback addresses and [delivery] port:

  d-good.test   MX mxgood (127.0.0.2): STARTTLS (aiosmtpd, a self-signed
                certificate), TLSA 3 1 1 of its key      -> delivered over TLS,
                the delivery log says "(dane-verified)"
  d-bad.test    MX mxbad (127.0.0.3): the same server kind, TLSA 3 1 1 of
                another key                               -> deferred, "hamrctl show"
                says why, the server never got MAIL
  plain.test    MX mx.plain.test (127.0.0.4): the recording sink, no
                STARTTLS, in the unsigned zone            -> delivered in plaintext
                as under may ("dane: no TLSA")
  only.plain.test the same MX, under dane-only             -> deferred, never sent

Deferred mail is retried only after 1 h, so that it stays queued to be shown.
Skips when nsd, unbound, ldnsutils, aiosmtpd or openssl is missing.
"""

import os
import re
import shutil
import ssl
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dnslab  # noqa: E402
import harness  # noqa: E402
from harness import field, make_message, new_test_id, wait_for  # noqa: E402
from test_tls_show import TLS_LEVEL  # noqa: E402

try:
    from aiosmtpd.controller import Controller
except ImportError:
    Controller = None

ZONE = """$ORIGIN test.
$TTL 30
@ IN SOA ns.test. admin.test. 1 3600 600 86400 30
@ IN NS ns.test.
ns IN A 127.0.0.1
mxgood IN A 127.0.0.2
mxbad IN A 127.0.0.3
_{port}._tcp.mxgood IN TLSA 3 1 1 {good}
_{port}._tcp.mxbad IN TLSA 3 1 1 {bad}
d-good IN MX 10 mxgood.test.
d-bad IN MX 10 mxbad.test.
plain IN NS ns.test.
"""

PLAIN_ZONE = """$ORIGIN plain.test.
$TTL 30
@ IN SOA ns.test. admin.test. 1 3600 600 86400 30
@ IN NS ns.test.
@ IN MX 10 mx.plain.test.
mx IN A 127.0.0.4
only IN MX 10 mx.plain.test.
"""

SENDER = "dane@example.com"


def spki_sha256(cert):
    """spki_sha256 - hex SHA-256 of the certificate's SubjectPublicKeyInfo (TLSA 3 1 1)."""
    pub = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"], check=True,
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=30).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         check=True, capture_output=True, timeout=30).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r"], input=der, check=True,
                            capture_output=True, timeout=30).stdout
    return digest.split()[0].decode()


class RecordingHandler:
    """RecordingHandler - aiosmtpd handler: records MAIL and DATA (with the TLS cipher), 250."""

    def __init__(self):
        self.lock = threading.Lock()
        self.mails = []
        self.data = []  # (cipher or None, rcpt_tos, content)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            self.mails.append(address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        cipher = session.ssl.get("cipher") if session.ssl else None
        with self.lock:
            self.data.append((cipher, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 OK"


class DaneTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.controllers = []
        if Controller is None or shutil.which("openssl") is None:
            raise harness.unittest.SkipTest("needs python3-aiosmtpd and openssl")
        port = harness.free_port("127.0.0.2")
        cert, key = harness.make_ip_cert(cls.env.dir)
        other_dir = os.path.join(cls.env.dir, "other")
        os.makedirs(other_dir, exist_ok=True)
        other_cert, _ = harness.make_ip_cert(other_dir)
        zone = ZONE.format(port=port, good=spki_sha256(cert), bad=spki_sha256(other_cert))
        cls.dns = dnslab.ValidatingDNS(cls.env, {"test": zone}, {"plain.test": PLAIN_ZONE})
        cls.dns.start()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        cls.good = RecordingHandler()
        cls.bad = RecordingHandler()
        for handler, host in ((cls.good, "127.0.0.2"), (cls.bad, "127.0.0.3")):
            c = Controller(handler, hostname=host, port=port, tls_context=ctx,
                           require_starttls=True)
            c.start()
            cls.controllers.append(c)
        cls.sink = cls.env.sink(name="plainmx", host="127.0.0.4", port=port).start()
        cls.node = cls.env.node(overrides={
            "dns": {"servers": "127.0.0.1:%d" % cls.dns.port, "timeout": "2s", "tries": "2"},
            "delivery": {"port": str(port), "tls_policy": "dane", "connect_timeout": "5s",
                         "retry_min": "1h", "retry_max": "1h"},
            "tls_policy": {"only.plain.test": "dane-only"},
            "smtpd": {"relay_domains": "example.com"},
        }).start()

    @classmethod
    def tearDownClass(cls):
        for c in getattr(cls, "controllers", []):
            c.stop()
        if getattr(cls, "dns", None) is not None:
            cls.dns.stop()
        super().tearDownClass()

    # --- helpers ------------------------------------------------------------

    def wait_level(self):
        """wait_level - until the cluster feature level allows the TLS fields."""
        wait_for(lambda: int(field(self.node.status(), "cluster_level", 0) or 0) >= TLS_LEVEL,
                 30, "cluster feature level %d" % TLS_LEVEL, interval=0.1)

    def submit(self, rcpt, tag):
        """submit - one message to rcpt (250 required); returns (test id, queue id)."""
        self.wait_level()
        tid = new_test_id(tag)
        res = self.node.send(SENDER, [rcpt], make_message(tid, SENDER, [rcpt]), retries_4xx=0)
        self.assertReply(res, 250, "2.0.0")
        self.assertTrue(res.queue_id, "no queue id in %r" % (res,))
        return tid, res.queue_id

    def delivery_log(self, qid):
        """delivery_log - the node's "delivery id=QID" log line, once there is one."""
        pattern = re.compile(r"^.*delivery id=%s .*$" % re.escape(qid), re.M)
        return wait_for(lambda: pattern.search(self.node.proc.log_text()), 30,
                        "a delivery log line for %s" % qid).group(0)

    def deferred_rcpt(self, qid):
        """deferred_rcpt - the only recipient of qid in "hamrctl --json show" once it was tried."""
        def tried():
            self.node.check_alive()
            (entry,) = field(self.node.ctl("show", qid), "entries")
            (r,) = field(entry, "rcpts")
            return r if int(field(r, "attempts", 0) or 0) >= 1 else None

        return wait_for(tried, 30, "%s to have been tried once" % qid, interval=0.1)

    def handler_saw(self, handler, tid):
        with handler.lock:
            return [d for d in handler.data if tid.encode() in d[2]]

    # --- cases --------------------------------------------------------------

    def test_a_tlsa_match_delivers_dane_verified(self):
        tid, qid = self.submit("bob@d-good.test", "dane-good")
        (cipher, rcpts, _), = wait_for(lambda: self.handler_saw(self.good, tid), 30,
                                       "mxgood to get %s" % tid)
        self.assertIsNotNone(cipher, "delivered without TLS")
        self.assertEqual(rcpts, ["bob@d-good.test"])
        line = self.delivery_log(qid)
        self.assertRegex(line, r'tls_policy=dane tls="TLSv1\.[23] [A-Z0-9_-]+ \(dane-verified\)"')
        self.assertIn("status=sent code=250", line)
        self.node.wait_queue_empty()

    def test_b_tlsa_mismatch_defers_without_mail(self):
        with self.bad.lock:
            mails_before = len(self.bad.mails)
        tid, qid = self.submit("bob@d-bad.test", "dane-bad")
        r = self.deferred_rcpt(qid)
        self.assertEqual(field(r, "state"), "deferred")
        self.assertEqual(field(r, "tls_policy"), "dane", r)
        self.assertEqual(field(r, "tls"),
                         "none (deferred: dane: TLSA records but no authenticated TLS)", r)
        self.assertIn("DANE", field(r, "last_error"))
        with self.bad.lock:
            self.assertEqual(len(self.bad.mails), mails_before, "mxbad got MAIL")
        self.assertEqual(self.handler_saw(self.bad, tid), [])

    def test_c_unsigned_zone_goes_as_may(self):
        tid, qid = self.submit("bob@plain.test", "dane-plain")
        recs = self.sink.wait_test_id(tid)
        self.assertEqual([rec["rcpt"] for rec in recs], ["bob@plain.test"])
        line = self.delivery_log(qid)
        self.assertIn('tls_policy=dane tls="none (plaintext: no STARTTLS; dane: no TLSA)"', line)

    def test_d_dane_only_without_tlsa_defers(self):
        tid, qid = self.submit("bob@only.plain.test", "dane-only")
        r = self.deferred_rcpt(qid)
        self.assertEqual(field(r, "tls_policy"), "dane-only", r)
        self.assertEqual(field(r, "tls"), "none (deferred: dane: no usable host)", r)
        self.assertIn("4.7.5", field(r, "last_error"))
        self.assertEqual(self.sink.by_test_id(tid), [])


if __name__ == "__main__":
    harness.main()
