#!/usr/bin/python3
"""test_tls_show.py - "hamrctl show" tells which TLS policy and TLS each recipient's last attempt had.

Two single-node hamr clusters, each retrying deferred mail only after 1 h, so
a message whose first attempt was deferred stays queued to be shown:

  plain  relays to the recording sink (deploy/sink.py), which offers no
         STARTTLS and answers every DATA with 451. A recipient under policy
         may shows "tls: may none (plaintext: no STARTTLS)"; one whose domain
         is under [tls_policy] encrypt shows "tls: encrypt none (deferred:
         STARTTLS not offered)" and the sink never saw that message.
  tls    relays under policy verify to a STARTTLS server (aiosmtpd, with a
         certificate for 127.0.0.1 made by openssl req for this test and given
         to hamrd as tls_ca_file), which answers DATA with 451 after TLS is up.
         The recipient shows "tls: verify TLSv1.x <cipher> (verified)".

The TLS fields are format 2: each node must first raise its cluster feature
level to 2 (it does so once its own NodeInfo is committed), which the test
waits for and checks. Text and --json output are both checked.

Skips the TLS case when aiosmtpd or openssl is missing.
"""

import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import field, make_message, new_test_id, wait_for  # noqa: E402

try:
    from aiosmtpd.controller import Controller
except ImportError:  # the TLS case skips
    Controller = None

TLS_LEVEL = 2  # QUEUE_LEVEL_TLS in queue/queue.h
HOLD_RETRIES = {"retry_min": "1h", "retry_max": "1h"}


class TempfailHandler:
    """TempfailHandler - aiosmtpd handler: 451 to every DATA; records whether TLS was up."""

    def __init__(self):
        self.lock = threading.Lock()
        self.data_calls = []  # (tls cipher or None, rcpt_tos)

    async def handle_DATA(self, server, session, envelope):
        cipher = session.ssl.get("cipher") if session.ssl else None
        with self.lock:
            self.data_calls.append((cipher, list(envelope.rcpt_tos)))
        return "451 4.3.0 try again later"


class TlsShowTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.sink = cls.env.sink(tempfail_first=1000).start()
        cls.plain = cls.env.node(node_id=1, name="plain", relayhost_port=cls.sink.port,
                                 overrides={"delivery": dict(HOLD_RETRIES),
                                            "tls_policy": {"secure.test": "encrypt"}}).start()
        cls.tls = None
        cls.controller = None
        if Controller is None or shutil.which("openssl") is None:
            return
        cert, key = harness.make_ip_cert(cls.env.dir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        cls.handler = TempfailHandler()
        cls.controller = Controller(cls.handler, hostname="127.0.0.1", port=harness.free_port(),
                                    tls_context=ctx, require_starttls=True)
        cls.controller.start()
        delivery = dict(HOLD_RETRIES, tls_policy="verify", tls_ca_file=cert)
        cls.tls = cls.env.node(node_id=1, name="tls", relayhost_port=cls.controller.port,
                               overrides={"delivery": delivery}).start()

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "controller", None) is not None:
            cls.controller.stop()
        super().tearDownClass()

    # --- helpers ------------------------------------------------------------

    def wait_level(self, node):
        """wait_level - until node's cluster feature level allows the TLS fields."""
        wait_for(lambda: int(field(node.status(), "cluster_level", 0) or 0) >= TLS_LEVEL, 30,
                 "%s to reach cluster feature level %d" % (node.name, TLS_LEVEL), interval=0.1)

    def submit(self, node, rcpt, tag):
        """submit - one message to rcpt through node (250 required); returns (test id, queue id)."""
        tid = new_test_id(tag)
        sender = "tls-show@example.org"
        res = node.send(sender, [rcpt], make_message(tid, sender, [rcpt]), retries_4xx=0)
        self.assertReply(res, 250, "2.0.0")
        self.assertTrue(res.queue_id, "no queue id in %r" % (res,))
        return tid, res.queue_id

    def deferred_rcpt(self, node, qid):
        """deferred_rcpt - the only recipient of qid in "hamrctl --json show" once it was tried."""
        def tried():
            node.check_alive()
            (entry,) = field(node.ctl("show", qid), "entries")
            (r,) = field(entry, "rcpts")
            return r if int(field(r, "attempts", 0) or 0) >= 1 else None

        return wait_for(tried, 30, "%s to have been tried once" % qid, interval=0.1)

    def show_text(self, node, qid):
        """show_text - the text of "hamrctl show ID" (exit 0 required)."""
        argv = [harness.hamrctl_path(), "-s", "%s:%d" % (node.host, node.control_port),
                "show", qid]
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=15,
                             env=node.ctl_env())
        self.assertEqual(out.returncode, 0, out)
        return out.stdout.decode("utf-8", "replace")

    def check_shown(self, node, qid, rcpt, policy, tls_re):
        """check_shown - JSON and text of show give this policy and a TLS text matching tls_re."""
        r = self.deferred_rcpt(node, qid)
        self.assertEqual(field(r, "addr"), rcpt)
        self.assertEqual(field(r, "state"), "deferred")
        self.assertEqual(field(r, "tls_policy"), policy, r)
        self.assertRegex(field(r, "tls"), "^%s$" % tls_re, r)
        text = self.show_text(node, qid)
        self.assertRegex(text, r"(?m)^  %s\n    state: deferred, attempts: 1, .*\n"
                         r"    last error: .*\n    tls: %s %s$"
                         % (re.escape(rcpt), re.escape(policy), tls_re), text)

    # --- cases --------------------------------------------------------------

    def test_a_plaintext_may(self):
        self.wait_level(self.plain)
        rcpt = "plain@example.com"
        tid, qid = self.submit(self.plain, rcpt, "tls-may")
        self.check_shown(self.plain, qid, rcpt, "may", re.escape("none (plaintext: no STARTTLS)"))
        # The attempt reached the sink's DATA (in plaintext: it has no STARTTLS) and was deferred.
        self.assertGreaterEqual(self.sink.events("tempfail_data"), 1)
        self.assertEqual(self.sink.by_test_id(tid), [])

    def test_b_encrypt_not_offered(self):
        self.wait_level(self.plain)
        rcpt = "locked@secure.test"
        before = self.sink.events("tempfail_data")
        tid, qid = self.submit(self.plain, rcpt, "tls-encrypt")
        self.check_shown(self.plain, qid, rcpt, "encrypt",
                         re.escape("none (deferred: STARTTLS not offered)"))
        r = self.deferred_rcpt(self.plain, qid)
        self.assertIn("TLS required", field(r, "last_error"))
        # Nothing was sent in plaintext: the sink never got to DATA for it.
        self.assertEqual(self.sink.events("tempfail_data"), before)
        self.assertEqual(self.sink.by_test_id(tid), [])

    def test_c_verified_tls(self):
        if self.tls is None:
            self.skipTest("needs python3-aiosmtpd and openssl")
        self.wait_level(self.tls)
        rcpt = "secret@example.com"
        tid, qid = self.submit(self.tls, rcpt, "tls-verify")
        self.check_shown(self.tls, qid, rcpt, "verify",
                         r"TLSv1\.[23] [A-Z0-9_-]+ \(verified\)")
        with self.handler.lock:
            calls = list(self.handler.data_calls)
        self.assertTrue(any(c and rc == [rcpt] for c, rc in calls), calls)


if __name__ == "__main__":
    harness.main()
