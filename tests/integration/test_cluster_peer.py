#!/usr/bin/python3
"""test_cluster_peer.py - a leader takes from another node only what that node may ask.

A member of the cluster gone bad (tests/tools/peer_forge, a real peer client
that says hello as a valid member's id) forwards to the leader, under load,
each entry kind node/peer_policy.h forbids: an Admin delete of a queued
message, a Lease, a ClusterLevel, an Outcome with lease 0 marking a queued
recipient delivered, the leader's own NodeInfo with another address,
another node's NodeInfo, and an Enqueue claiming another node accepted it.
Each is answered "not permitted", logged with its reason and counted in
hamr_peer_refused_total{reason}; the targeted message stays queued and is
delivered once the next hop is back; the directory still names the real
addresses; and the load passes the oracle (nothing acknowledged lost,
nothing unexpected delivered).
"""

import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from harness import field, make_message, new_test_id, send_message, wait_for  # noqa: E402

FORGE = os.environ.get("PEER_FORGE", "")


class ClusterPeerPolicyTest(cluster.ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        if not os.access(FORGE, os.X_OK):
            raise unittest.SkipTest("PEER_FORGE (tests/tools/peer_forge) is not built")
        c = cluster.Cluster(cls.env, 3)
        c.add_http()
        return c

    def refused(self, node):
        """refused - {reason: count} of hamr_peer_refused_total on node's /metrics."""
        return node.counters("hamr_peer_refused_total", "reason")

    def forge(self, leader, as_node, *args):
        """forge - peer_forge against leader's peer port as node as_node; its output line."""
        tls = []
        if leader.tls():  # as_node's own certificate: a member gone bad, not a stranger
            files = harness.pki_node(as_node)
            tls = ["--ca", files["ca_file"], "--cert", files["cert_file"],
                   "--key", files["key_file"], "--to", str(leader.id)]
        out = subprocess.run([FORGE] + tls + ["%s:%d" % (leader.host, leader.peer_port),
                                              str(as_node)] + list(args),
                             capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        text = out.stdout.decode() + out.stderr.decode()
        self.assertEqual(out.returncode, 0, "peer_forge %s: %s" % (args, text))
        return text.strip()

    def queued_id(self, node):
        """queued_id - with the next hop down, one message queued everywhere; (test id, qid)."""
        tid = new_test_id("peer-target")
        rcpt = "target@example.com"
        msg = make_message(tid, "peer@example.org", [rcpt])
        res = send_message(node.smtp_port, "peer@example.org", [rcpt], msg, host=node.host,
                           timeout=40)
        self.assertReply(res, 250, "2.0.0", repr(res))
        for n in self.cluster.nodes:
            wait_for(lambda n=n: self.rcpt_states(n, res.queue_id) is not None, 20,
                     "%s queued on %s" % (res.queue_id, n.name), interval=0.1)
        return tid, res.queue_id

    def rcpt_states(self, node, qid):
        """rcpt_states - the states of qid's recipients on node, None if it is not queued."""
        try:
            resp = node.ctl("show", qid)
        except harness.CtlError:
            return None
        (entry,) = field(resp, "entries")
        return [field(r, "state") for r in field(entry, "rcpts", [])]

    def test_a_forged_entries_refused_under_load(self):
        leader = self.cluster.wait_leader()
        member, other = [n for n in self.cluster.nodes if n is not leader]
        sink = self.cluster.sink
        sink.stop()
        tid, qid = self.queued_id(member)
        before = self.refused(leader)
        level_before = field(leader.status(), "cluster_level")
        self.load = cluster.LoadGen(self.cluster, "peer", threads=3, max_messages=200,
                                    max_seconds=60).start()
        cases = [
            (("admin-delete", qid), "kind"),
            (("lease", qid), "kind"),
            (("cluster-level", "99"), "kind"),
            (("outcome-delivered", qid), "lease"),
            (("nodeinfo", str(leader.id), "127.0.0.1:9"), "identity"),
            (("nodeinfo", str(other.id), "127.0.0.1:9"), "identity"),
            (("enqueue-as", str(other.id)), "identity"),
        ]
        for args, _ in cases:
            line = self.forge(leader, member.id, *args)
            self.assertRegex(line, r"^status=-?\d+ not permitted$", "%s: %s" % (args, line))
        expected = {}
        for _, reason in cases:
            expected[reason] = expected.get(reason, 0) + 1
        after = self.refused(leader)
        for reason, n in expected.items():
            self.assertEqual(after.get(reason, 0) - before.get(reason, 0), n,
                             "hamr_peer_refused_total{reason=%s}: %s -> %s" % (reason, before,
                                                                                after))
        self.assertIn("peer entry refused node=%d" % member.id, leader.proc.log_text())
        # Raft's own connections reach the leader through the checked hop, none refused.
        port = leader.counters("hamr_raft_port_connections_total", "event")
        self.assertGreater(port.get("accepted", 0), 0, port)
        self.assertEqual(port.get("refused", 0), 0, port)
        # Nothing of it took effect: the message is still queued and its recipient not done,
        # the directory names the real control addresses, the level is what it was.
        for n in self.cluster.nodes:
            states = self.rcpt_states(n, qid)
            self.assertIsNotNone(states, "%s gone from %s" % (qid, n.name))
            self.assertEqual(len(states), 1)
            self.assertIn(states[0], ("pending", "deferred", "active"), states)
            st = n.status()
            self.assertEqual(field(st, "cluster_level"), level_before)
            self.assertNotIn("127.0.0.1:9", str(field(st, "leader_control")))
        # The cluster kept committing all along; the next hop comes back and delivers.
        self.load.wait_ok(50, 60)
        self.load.stop()
        sink.start()
        leader.ctl("flush")
        (rec,) = sink.wait_test_id(tid, timeout=60)
        self.assertEqual(rec["rcpt"], "target@example.com")
        self.assertEqual([r for r in sink.records() if r.get("rcpt") == "victim@example.com"], [])
        cluster.oracle_run(self, self.cluster, self.load, "peer-policy")


if __name__ == "__main__":
    unittest.main(verbosity=2)
