#!/usr/bin/python3
"""test_cluster_dkim.py - DKIM signing in a 3-node cluster: once, by the node that accepts.

Covers: every node has the same [dkim] keys (RSA 2048 for example.org,
Ed25519 for example.net); a message sent to the leader and to each follower
(which forwards the finished entry to the leader) is delivered exactly once
with exactly one DKIM-Signature: on top, above exactly one Received: (the
accepting node's), and verifies with python3-dkim; hamr_dkim_signed_total
grows on the accepting node only, by one per message: the leader does not
sign a follower's entry again, and the delivering node does not sign.
"""

import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
import test_dkim as dkimlab  # noqa: E402
from harness import make_message, new_test_id, send_message  # noqa: E402


@unittest.skipUnless(dkimlab.dkim is not None, "python3-dkim is not installed")
@unittest.skipUnless(dkimlab.OPENSSL, "the openssl command is not installed")
class ClusterDkimTest(cluster.ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        keys = os.path.join(cls.env.dir, "keys")
        os.makedirs(keys)
        harness.give_to_run_user(keys)
        rsa, ed = os.path.join(keys, "rsa.pem"), os.path.join(keys, "ed.pem")
        dkimlab.genkey(rsa, "rsa")
        dkimlab.genkey(ed, "ed25519")
        cls.dns = {"rsa1._domainkey.example.org": dkimlab.txt_record(rsa, "rsa"),
                   "ed1._domainkey.example.net": dkimlab.txt_record(ed, "ed25519")}
        c = cluster.Cluster(cls.env, 3, overrides={
            "dkim": {"key": "example.org rsa1 %s\n    example.net ed1 %s" % (rsa, ed)}})
        c.add_http()
        return c

    def dnsfunc(self, name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        text = self.dns.get(name.rstrip(".").lower())
        return text.encode() if text else None

    def signed_counts(self):
        """signed_counts - {node id: hamr_dkim_signed_total summed over alg}."""
        return {n.id: sum(n.counters("hamr_dkim_signed_total", label="alg").values())
                for n in self.cluster.nodes}

    def test_signed_once_by_the_accepting_node(self):
        c = self.cluster
        if not c.forwarding:
            self.skipTest("no follower forwarding in this hamrd")
        leader = c.wait_leader()
        nodes = [leader] + [n for n in c.nodes if n is not leader]
        before = self.signed_counts()
        sent = []
        for node in nodes:
            for sender in ("ann@example.org", "ben@example.net"):
                tid = new_test_id("cdkim-%s" % node.name)
                rcpt = "to-%s@example.com" % node.name
                msg = make_message(tid, sender, [rcpt], body="via %s, caf\u00e9\r\n" % node.name,
                                   extra_headers=["Date: Mon, 07 Dec 2026 05:00:00 +0000"])
                res = send_message(node.smtp_port, sender, [rcpt], msg, host=node.host,
                                   timeout=40)
                self.assertReply(res, 250, "2.0.0", "%s answered %r" % (node.name, res))
                sent.append((tid, node, msg))
        for tid, node, msg in sent:
            (rec,) = c.sink.wait_test_id(tid, timeout=60)
            data = c.sink.read_file(rec)
            head = data.split(b"\r\n\r\n", 1)[0]
            self.assertTrue(data.startswith(b"DKIM-Signature: "), data[:200])
            self.assertEqual(len(re.findall(rb"(?im)^dkim-signature:", head)), 1, head)
            self.assertEqual(len(re.findall(rb"(?im)^received:", head)), 1, head)
            self.assertRegex(head, rb"by %s\.relay\.test" % node.name.encode())
            self.assertTrue(data.endswith(msg), "body changed in transit")
            self.assertTrue(dkimlab.dkim.verify(data, dnsfunc=self.dnsfunc),
                            "does not verify: %r" % data[:800])
        harness.wait_for(lambda: all(self.signed_counts()[n.id] - before[n.id] == 2
                                     for n in nodes), 30,
                         "two signatures counted on each accepting node")
        for n in nodes:
            self.assertEqual(self.signed_counts()[n.id] - before[n.id], 2, n.name)
        # Nothing delivered twice.
        c.sink.wait_test_id(sent[-1][0])
        for tid, _, _ in sent:
            self.assertEqual(len(c.sink.by_test_id(tid)), 1, tid)


if __name__ == "__main__":
    harness.main()
