#!/usr/bin/python3
"""test_mx_routing.py - mail to the internet: MX routing against a real DNS server.

One hamrd with no relayhost and no [transport] routes every recipient by its
domain (RFC 5321 5.1). NSD serves the zone "test." on 127.0.0.1; hamrd asks it
through a UDP gate the test can make silent ([dns] servers). The sinks are the
MX hosts, each on its own loopback address (127.0.0.2 to 127.0.0.4, and ::1)
and one port, which is [delivery] port. 127.0.0.5 has nothing listening.

  d-order     MX 10 mx1, MX 20 mx2           -> mx1 (preference order)
  d-first-dead MX 10 dead, MX 20 mx2         -> mx2 (a refused connection moves on)
  d-refuse    MX 10 refuser, MX 20 mx3       -> mx3 (a 421 greeting moves on)
  d-twoaddr   MX 10 twoaddr (A dead, A mx1)  -> mx1 (every address of a host)
  d-implicit  no MX, A 127.0.0.3             -> mx2 (implicit MX)
  d-cname     MX 10 alias, alias CNAME mx3   -> mx3 (the chain followed)
  d-v6        MX 10 v6only (AAAA ::1)        -> the sink on [::1]
  [127.0.0.4] an address literal             -> mx3
  d-null      MX 0 .                         -> one DSN with 5.1.10, no retry
  nosuch      NXDOMAIN                       -> one DSN with 5.4.4
  d-loop      MX 10 self (A 127.0.0.1, hamrd's own address) -> one DSN with 5.4.6
  broken.test SERVFAIL (zone not loaded)     -> deferred 4.4.3, delivered once it loads
  d-late      the gate silent (timeouts)     -> deferred, delivered once DNS answers
"""

import os
import re
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dnslab  # noqa: E402
import harness  # noqa: E402
from harness import make_message, new_test_id, wait_for  # noqa: E402

ZONE = """$ORIGIN test.
$TTL 30
@ IN SOA ns.test. admin.test. 1 3600 600 86400 30
@ IN NS ns.test.
ns IN A 127.0.0.1
mx1 IN A 127.0.0.2
mx2 IN A 127.0.0.3
mx3 IN A 127.0.0.4
dead IN A 127.0.0.5
refuser IN A 127.0.0.6
twoaddr IN A 127.0.0.5
twoaddr IN A 127.0.0.2
v6only IN AAAA ::1
self IN A 127.0.0.1
alias IN CNAME mx3.test.
d-order IN MX 10 mx1.test.
d-order IN MX 20 mx2.test.
d-first-dead IN MX 10 dead.test.
d-first-dead IN MX 20 mx2.test.
d-refuse IN MX 10 refuser.test.
d-refuse IN MX 20 mx3.test.
d-twoaddr IN MX 10 twoaddr.test.
d-implicit IN A 127.0.0.3
d-cname IN MX 10 alias.test.
d-v6 IN MX 10 v6only.test.
d-null IN MX 0 .
d-loop IN MX 10 self.test.
d-late IN MX 10 mx1.test.
"""

BROKEN_ZONE = """$ORIGIN broken.test.
$TTL 30
@ IN SOA ns.test. admin.test. 1 3600 600 86400 30
@ IN NS ns.test.
@ IN MX 10 mx2.test.
"""

SENDER = "alice@d-order.test"  # DSNs come back to mx1


class GreetingRefuser:
    """GreetingRefuser - an SMTP server that greets every connection with 421 and closes."""

    def __init__(self, host, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                conn.sendall(b"421 4.3.2 refuser.test busy, try another\r\n")
            except OSError:
                pass
            conn.close()

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


class MxRoutingTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.dns = dnslab.AuthDNS(cls.env, {"test": ZONE, "broken.test": None}).start()
        cls.gate = dnslab.DnsGate(cls.dns.port)
        port = harness.free_port("127.0.0.2")
        cls.mx1 = cls.env.sink(name="mx1", host="127.0.0.2", port=port).start()
        cls.mx2 = cls.env.sink(name="mx2", host="127.0.0.3", port=port).start()
        cls.mx3 = cls.env.sink(name="mx3", host="127.0.0.4", port=port).start()
        cls.refuser = GreetingRefuser("127.0.0.6", port)
        cls.mx6 = None
        if harness.ipv6_loopback():
            cls.mx6 = cls.env.sink(name="mx6", host="::1", port=port).start()
        cls.node = cls.env.node(overrides={
            "dns": {"servers": "127.0.0.1:%d" % cls.gate.port, "timeout": "300ms",
                    "tries": "1"},
            "delivery": {"port": str(port), "connect_timeout": "5s",
                         "retry_min": "1s", "retry_max": "2s"},
            "smtpd": {"relay_domains": "example.com"},
        })
        cls.node.start()

    @classmethod
    def tearDownClass(cls):
        for helper in (getattr(cls, "gate", None), getattr(cls, "refuser", None)):
            if helper:
                helper.close()
        super().tearDownClass()

    def send_to(self, rcpt, sender=SENDER):
        tid = new_test_id("mx")
        res = self.node.send(sender, [rcpt], make_message(tid, sender, [rcpt]))
        self.assertReply(res, 250, "2.0.0")
        return tid

    def assert_delivered_to(self, sink, rcpt, others=()):
        tid = self.send_to(rcpt)
        recs = sink.wait_test_id(tid)
        self.assertEqual([r["rcpt"] for r in recs], [rcpt])
        for other in others:
            self.assertEqual(other.by_test_id(tid), [], "also delivered to %s" % other.name)
        return tid

    def dsns(self, tid_rcpt):
        """dsns - DSNs (from <>) at mx1 that name tid_rcpt."""
        out = []
        for r in self.mx1.records():
            if r["mail_from"] == "" and tid_rcpt.encode() in self.mx1.read_file(r):
                out.append(r)
        return out

    def assert_bounced(self, rcpt, status):
        self.send_to(rcpt)
        rec = wait_for(lambda: self.dsns(rcpt), 30, "a DSN for %s" % rcpt)[0]
        data = self.mx1.read_file(rec)
        self.assertRegex(data, rb"(?im)^Status:\s*" + re.escape(status.encode()))
        self.assertRegex(data, rb"(?im)^Action:\s*failed")
        self.node.wait_queue_empty()
        self.assertEqual(len(self.dsns(rcpt)), 1, "more than one DSN")
        return data

    def test_a_preference_order(self):
        self.assert_delivered_to(self.mx1, "bob@d-order.test", others=(self.mx2,))

    def test_b_first_mx_dead(self):
        self.assert_delivered_to(self.mx2, "bob@d-first-dead.test")

    def test_c_first_mx_refuses(self):
        before = self.refuser.connections
        self.assert_delivered_to(self.mx3, "bob@d-refuse.test")
        self.assertGreater(self.refuser.connections, before, "the first MX was not tried")

    def test_d_every_address_of_a_host(self):
        self.assert_delivered_to(self.mx1, "bob@d-twoaddr.test")

    def test_e_implicit_mx(self):
        self.assert_delivered_to(self.mx2, "bob@d-implicit.test")

    def test_f_cname(self):
        self.assert_delivered_to(self.mx3, "bob@d-cname.test")

    def test_g_ipv6_only_mx(self):
        if self.mx6 is None:
            self.skipTest("::1 is not configured")
        self.assert_delivered_to(self.mx6, "bob@d-v6.test")

    def test_h_address_literal(self):
        self.assert_delivered_to(self.mx3, "bob@[127.0.0.4]")

    def test_i_null_mx(self):
        data = self.assert_bounced("bob@d-null.test", "5.1.10")
        self.assertIn(b"null MX", data)

    def test_j_nxdomain(self):
        self.assert_bounced("bob@nosuch.test", "5.4.4")

    def test_k_loop_to_self(self):
        data = self.assert_bounced("bob@d-loop.test", "5.4.6")
        self.assertIn(b"loops back to myself", data)

    def test_l_servfail_defers_then_delivers(self):
        tid = self.send_to("bob@broken.test")
        rcpt = wait_for(lambda: self.deferred_rcpt(tid), 30, "a deferral with 4.4.3")
        self.assertIn("4.4.3", rcpt["last_error"])
        self.dns.set_zone("broken.test", BROKEN_ZONE)
        self.node.ctl("flush")
        self.mx2.wait_test_id(tid)
        self.node.wait_queue_empty()

    def test_m_dns_timeout_defers_then_delivers(self):
        self.gate.mode = "drop"
        try:
            tid = self.send_to("bob@d-late.test")
            rcpt = wait_for(lambda: self.deferred_rcpt(tid), 30, "a deferral")
            self.assertIn("4.4.3", rcpt["last_error"])
            self.assertGreater(self.gate.dropped, 0)
        finally:
            self.gate.mode = "forward"
        self.node.ctl("flush")
        self.mx1.wait_test_id(tid)
        self.node.wait_queue_empty()

    def deferred_rcpt(self, tid):
        """deferred_rcpt - the queued recipient of the message tid once it was deferred."""
        for e in self.node.queue():
            for r in harness.field(e, "rcpts", []) or []:
                if harness.field(r, "last_error") and int(harness.field(r, "attempts", 0)
                                                          or 0) > 0:
                    r["last_error"] = harness.field(r, "last_error")
                    return r
        return None


if __name__ == "__main__":
    harness.main()
