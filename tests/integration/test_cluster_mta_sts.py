#!/usr/bin/python3
"""test_cluster_mta_sts.py - a new leader enforces the MTA-STS policy the old one learned.

Three voters route sts.test by MX (NSD); example.com and example.org (the
probes) go to the cluster's recording sink by [transport]. sts.test
publishes an enforce policy (mx: mx1.test) on an HTTPS host; its MX is
mx1.test, a STARTTLS server with a certificate from the test CA.

1. A message to sts.test is delivered to mx1 over verified TLS; the policy
   is written to the raft log: every node's replicated cache holds it.
2. The policy host goes away, the leader is killed, and the MX record is
   changed to mx2.test (a server with a valid certificate for its own name:
   what an attacker who can change DNS answers would offer), with a new
   TXT id, so that a node that looked would find a changed policy it
   cannot fetch.
3. Through the new leader, a message to sts.test is deferred with 4.7.5
   and mx2 never sees it: the cached policy was enforced without the
   policy host.
4. The MX record points at mx1 again; after a flush the message is
   delivered there.

ClusterMtaStsFollowerTest: from cluster level 6 any node delivers, so the
fetch may be a follower's. Only node 3 has delivery slots (the others
[delivery] delivery_slots = 0), and it is made a follower (hamrctl
transfer) before a message to sts.test: node 3 fetches the policy, and its
StsPolicy entry, forwarded to the leader, reaches every node's replicated
cache. (Before, a follower's fetch served its delivery only.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import dnslab  # noqa: E402
import harness  # noqa: E402
import tlslab  # noqa: E402
from harness import field, make_message, new_test_id, wait_for  # noqa: E402

POLICY_HOST = "127.0.0.7"


def zone(mx, txt_id):
    return """$ORIGIN test.
$TTL 1
@ IN SOA ns.test. admin.test. 1 3600 600 86400 1
@ IN NS ns.test.
ns IN A 127.0.0.1
mx1 IN A 127.0.0.2
mx2 IN A 127.0.0.3
sts IN MX 10 %s.test.
_mta-sts.sts IN TXT "v=STSv1; id=%s"
mta-sts.sts IN A %s
""" % (mx, txt_id, POLICY_HOST)


POLICY = "version: STSv1\nmode: enforce\nmx: mx1.test\nmax_age: 86400\n"
SENDER = "probe@example.org"


class MtaStsCluster(cluster.ClusterTestCase):
    """MtaStsCluster - the cluster, DNS, MX hosts and policy host both cases use."""

    SLOTS = {}  # node id -> [delivery] delivery_slots (default: every node's own)

    @classmethod
    def make_cluster(cls):
        cls.dns = dnslab.AuthDNS(cls.env, {"test": zone("mx1", "one")}).start()
        ca = tlslab.make_ca(cls.env.dir)
        port = harness.free_port("127.0.0.2")
        cls.mx1 = tlslab.StartTlsSink("127.0.0.2", port,
                                      *tlslab.make_leaf(cls.env.dir, ca, ["mx1.test"], "mx1"))
        cls.mx2 = tlslab.StartTlsSink("127.0.0.3", port,
                                      *tlslab.make_leaf(cls.env.dir, ca, ["mx2.test"], "mx2"))
        https_port = harness.free_port(POLICY_HOST)
        web_cert = tlslab.make_leaf(cls.env.dir, ca, ["mta-sts.sts.test"], "web")
        cls.web = tlslab.PolicyServer(POLICY_HOST, https_port, *web_cert,
                                      {"mta-sts.sts.test": POLICY})
        c = cluster.Cluster(cls.env, 3, overrides={
            "dns": {"servers": "127.0.0.1:%d" % cls.dns.port},
            "delivery": {"port": str(port), "tls_ca_file": ca[0]},
            "mta_sts": {"https_port": str(https_port), "ca_file": ca[0], "timeout": "5s"},
        })
        # Everything but sts.test to the recording sink, by transport: no relayhost.
        sink = "[%s]:%d" % (c.sink.host, c.sink.port)
        for node in c.nodes:
            node.relayhost_port = None
            node.overrides["transport"] = {"example.com": sink, "example.org": sink}
            if node.id in cls.SLOTS:
                node.overrides = {k: dict(v) for k, v in node.overrides.items()}
                node.overrides["delivery"]["delivery_slots"] = str(cls.SLOTS[node.id])
            node.write_config()
        return c

    @classmethod
    def tearDownClass(cls):
        for peer in ("mx1", "mx2", "web"):
            if getattr(cls, peer, None) is not None:
                getattr(cls, peer).stop()
        super().tearDownClass()

    def send(self, node, rcpt):
        tid = new_test_id("sts")
        res = node.send(SENDER, [rcpt], make_message(tid, SENDER, [rcpt]))
        self.assertReply(res, 250, "2.0.0")
        return tid


class ClusterMtaStsTest(MtaStsCluster):
    def test_new_leader_enforces_cached_policy(self):
        c = self.cluster
        leader = c.wait_leader()
        tid = self.send(leader, "bob@sts.test")
        msgs = wait_for(lambda: self.mx1.with_marker(tid.encode()), 40, "delivery to mx1")
        self.assertIsNotNone(msgs[0][0], "delivered without TLS")
        for node in c.nodes:
            wait_for(lambda: int(field(node.status(), "sts_policies", 0) or 0) == 1, 20,
                     "the policy in %s's replicated cache" % node.name)

        self.web.stop()
        self.dns.set_zone("test", zone("mx2", "two"))
        c.kill9(leader)
        new = c.wait_leader(timeout=30, exclude=(leader,))
        c.wait_ready(60)

        tid2 = self.send(new, "carol@sts.test")

        def deferred():
            for e in new.queue():
                for r in field(e, "rcpts", []) or []:
                    if field(r, "addr") == "carol@sts.test" and field(r, "last_error"):
                        return field(r, "last_error")
            return None

        err = wait_for(deferred, 40, "carol deferred by the cached policy")
        self.assertIn("4.7.5", err)
        self.assertIn("MTA-STS", err)
        self.assertEqual(self.mx2.with_marker(tid2.encode()), [], "mx2 got the message")

        self.dns.set_zone("test", zone("mx1", "two"))
        new.ctl("flush")
        wait_for(lambda: self.mx1.with_marker(tid2.encode()), 60, "delivery to mx1 at last")
        self.assertEqual(self.mx2.with_marker(tid2.encode()), [], "mx2 got the message")


class ClusterMtaStsFollowerTest(MtaStsCluster):
    SLOTS = {1: 0, 2: 0}
    DELIVERER = 3

    def test_follower_fetch_replicated(self):
        c = self.cluster
        deliverer = c.node(self.DELIVERER)
        leader = c.wait_leader()
        if leader is deliverer:
            leader = c.transfer()
        def level6():
            return all(int(field(n.status(), "cluster_level", 0) or 0) >= 6 for n in c.nodes)

        wait_for(level6, 30, "every node at cluster feature level 6")
        tid = self.send(leader, "dave@sts.test")
        msgs = wait_for(lambda: self.mx1.with_marker(tid.encode()), 40, "delivery to mx1")
        self.assertIsNotNone(msgs[0][0], "delivered without TLS")
        self.assertIsNot(c.wait_leader(), deliverer, "%s leads again" % deliverer.name)
        fetched = [n.name for n in c.nodes
                   if "mta-sts policy domain=sts.test" in n.proc.log_text()]
        self.assertEqual(fetched, [deliverer.name], "the nodes that fetched the policy")
        for node in c.nodes:
            wait_for(lambda: int(field(node.status(), "sts_policies", 0) or 0) == 1, 20,
                     "the policy %s fetched in %s's replicated cache"
                     % (deliverer.name, node.name))


if __name__ == "__main__":
    harness.main()
