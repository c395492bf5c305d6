#!/usr/bin/python3
"""test_mta_sts.py - MTA-STS (RFC 8461) for domains routed by MX.

One hamrd routes by MX through NSD (the zone "test."); the MX hosts are
STARTTLS servers with certificates from a test CA, which hamrd trusts for
verify ([delivery] tls_ca_file); the policy host mta-sts.<domain> is an
HTTPS server on 127.0.0.7 with a certificate from the same CA ([mta_sts]
ca_file, https_port).

  sts-enforce   enforce, mx: mx1.test; MX -> mx1  -> delivered, TLS verified, policy "mta-sts"
  sts-mismatch  enforce, mx: mx1.test; MX -> mx2  -> deferred, mx2 gets nothing
  sts-testing   testing, mx: mx1.test; MX -> mx2  -> delivered to mx2, named "mta-sts testing"
  sts-absent    no _mta-sts record; MX -> mx1      -> delivered under the default policy
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dnslab  # noqa: E402
import harness  # noqa: E402
import tlslab  # noqa: E402
from harness import make_message, new_test_id, wait_for  # noqa: E402

POLICY_HOST = "127.0.0.7"

ZONE = """$ORIGIN test.
$TTL 30
@ IN SOA ns.test. admin.test. 1 3600 600 86400 30
@ IN NS ns.test.
ns IN A 127.0.0.1
mx1 IN A 127.0.0.2
mx2 IN A 127.0.0.3
sts-enforce IN MX 10 mx1.test.
_mta-sts.sts-enforce IN TXT "v=STSv1; id=enforce1"
mta-sts.sts-enforce IN A %(policy)s
sts-mismatch IN MX 10 mx2.test.
_mta-sts.sts-mismatch IN TXT "v=STSv1; id=mismatch1"
mta-sts.sts-mismatch IN A %(policy)s
sts-testing IN MX 10 mx2.test.
_mta-sts.sts-testing IN TXT "v=STSv1; id=testing1"
mta-sts.sts-testing IN A %(policy)s
sts-absent IN MX 10 mx1.test.
""" % {"policy": POLICY_HOST}


def policy(mode, *mx):
    return "version: STSv1\nmode: %s\n%smax_age: 86400\n" % (
        mode, "".join("mx: %s\n" % m for m in mx))


POLICIES = {
    "mta-sts.sts-enforce.test": policy("enforce", "mx1.test"),
    "mta-sts.sts-mismatch.test": policy("enforce", "mx1.test"),
    "mta-sts.sts-testing.test": policy("testing", "mx1.test"),
}

SENDER = "alice@sts-absent.test"


class MtaStsTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.dns = dnslab.AuthDNS(cls.env, {"test": ZONE}).start()
        ca = tlslab.make_ca(cls.env.dir)
        mx1 = tlslab.make_leaf(cls.env.dir, ca, ["mx1.test"], "mx1")
        mx2 = tlslab.make_leaf(cls.env.dir, ca, ["mx2.test"], "mx2")
        web = tlslab.make_leaf(cls.env.dir, ca, sorted(POLICIES), "policy")
        port = harness.free_port("127.0.0.2")
        cls.mx1 = tlslab.StartTlsSink("127.0.0.2", port, *mx1)
        cls.mx2 = tlslab.StartTlsSink("127.0.0.3", port, *mx2)
        https_port = harness.free_port(POLICY_HOST)
        cls.web = tlslab.PolicyServer(POLICY_HOST, https_port, *web, POLICIES)
        http_port = harness.free_port()
        cls.node = cls.env.node(overrides={
            "listen": {"http": "127.0.0.1:%d" % http_port},
            "dns": {"servers": "127.0.0.1:%d" % cls.dns.port},
            "delivery": {"port": str(port), "tls_ca_file": ca[0], "retry_min": "1h",
                         "retry_max": "1h"},
            "mta_sts": {"https_port": str(https_port), "ca_file": ca[0], "timeout": "10s"},
        })
        cls.node.http_port = http_port
        cls.node.start()

    @classmethod
    def tearDownClass(cls):
        for peer in ("mx1", "mx2", "web"):
            if getattr(cls, peer, None) is not None:
                getattr(cls, peer).stop()
        super().tearDownClass()

    def send_to(self, rcpt):
        tid = new_test_id("sts")
        res = self.node.send(SENDER, [rcpt], make_message(tid, SENDER, [rcpt]))
        self.assertReply(res, 250, "2.0.0")
        return tid

    def delivery_line(self, rcpt):
        m = re.search(r"(?m)^.* delivery id=\S+ to=<%s> .*$" % re.escape(rcpt),
                      self.node.proc.log_text())
        return m and m.group(0)

    def test_a_enforce_matching_mx(self):
        rcpt = "bob@sts-enforce.test"
        tid = self.send_to(rcpt)
        msgs = wait_for(lambda: self.mx1.with_marker(tid.encode()), 30, "delivery to mx1")
        self.assertIsNotNone(msgs[0][0], "delivered without TLS")
        line = wait_for(lambda: self.delivery_line(rcpt), 10, "the delivery line")
        self.assertIn("tls_policy=mta-sts ", line)
        self.assertIn("status=sent", line)
        self.assertGreater(self.web.requests, 0, "the policy was not fetched")
        # Written to the raft log: the node's replicated cache holds it.
        wait_for(lambda: int(harness.field(self.node.status(), "sts_policies", 0) or 0) >= 1,
                 10, "the policy in the replicated cache")

    def test_b_enforce_mismatching_mx_defers(self):
        rcpt = "bob@sts-mismatch.test"
        tid = self.send_to(rcpt)
        line = wait_for(lambda: self.delivery_line(rcpt), 30, "the delivery line")
        self.assertIn("status=deferred", line)
        self.assertIn("tls_policy=mta-sts ", line)
        self.assertEqual(self.mx2.with_marker(tid.encode()), [], "mx2 got the message")
        entries = self.node.queue()
        self.assertEqual(len(entries), 1)
        err = harness.field(harness.field(entries[0], "rcpts")[0], "last_error")
        self.assertIn("MTA-STS", err)

    def test_c_testing_delivers(self):
        rcpt = "bob@sts-testing.test"
        tid = self.send_to(rcpt)
        wait_for(lambda: self.mx2.with_marker(tid.encode()), 30, "delivery to mx2")
        line = wait_for(lambda: self.delivery_line(rcpt), 10, "the delivery line")
        self.assertIn("mta-sts testing", line)
        self.assertIn("status=sent", line)

    def test_d_no_policy(self):
        rcpt = "bob@sts-absent.test"
        before = self.web.requests
        tid = self.send_to(rcpt)
        wait_for(lambda: self.mx1.with_marker(tid.encode()), 30, "delivery to mx1")
        line = wait_for(lambda: self.delivery_line(rcpt), 10, "the delivery line")
        self.assertIn("tls_policy=may ", line)
        self.assertEqual(self.web.requests, before, "a policy host was asked")

    def test_e_metrics_by_policy_source(self):
        src = self.node.counters("hamr_tls_policy_deliveries_total", label="source")
        # a, b and c ran under a policy of their domain; d under the default.
        self.assertGreaterEqual(src.get("mta_sts", 0), 3, src)
        self.assertGreaterEqual(src.get("default", 0), 1, src)
        self.assertEqual(src.get("dane", 0), 0, src)


if __name__ == "__main__":
    harness.main()
