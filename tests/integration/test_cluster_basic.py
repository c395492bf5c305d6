#!/usr/bin/python3
"""test_cluster_basic.py - a 3-node hamr cluster on 127.0.0.1 takes mail through every node.

With HAMR_CLUSTER_HOST=::1 (ctest integ_cluster_basic_ipv6) every node, the
sink and hamrctl use ::1 instead: IPv6 voters, raft, peer and control
addresses, published bracketed; skipped when ::1 is not configured here.

Covers: mail sent to each of the three nodes is delivered exactly once,
byte-identical after the Received: header; followers answer 250 (they
forward to the leader and wait for the commit); afterwards every queue is
empty and every queue digest and applied index are equal; "hamrctl status"
on every node names the same leader and term, and the leader's control
address as HOST:PORT ("[::1]:PORT" on IPv6); "hamrctl transfer ID" makes
the chosen node leader, also when sent to a follower (which redirects
hamrctl over TLS to the leader's control address), and the old leader then
forwards mail to the new one; a short load through all nodes passes the
oracle (no loss, no duplicate, no corruption).

Without follower forwarding in this hamrd ([listen] peer unknown) the
follower cases are skipped and mail goes to the leader only.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from harness import field, make_message, new_test_id, send_message, sha256_hex  # noqa: E402

# The address of every node and of the sink: 127.0.0.1, or ::1 for the IPv6 run.
HOST = os.environ.get("HAMR_CLUSTER_HOST") or "127.0.0.1"


class ClusterBasicTest(cluster.ClusterTestCase):
    @classmethod
    def setUpClass(cls):
        if HOST == "::1" and not harness.ipv6_loopback():
            raise unittest.SkipTest("::1 is not configured on this machine")
        super().setUpClass()

    @classmethod
    def make_cluster(cls):
        return cluster.Cluster(cls.env, 3, host=HOST)

    def send_each(self, nodes, tag):
        """send_each - one message through each node (no retry: a 4xx fails the test)."""
        sent = {}
        for node in nodes:
            tid = new_test_id("%s-%s" % (tag, node.name))
            rcpt = "to-%s@example.com" % node.name
            msg = make_message(tid, "basic@example.org", [rcpt], body="through %s\r\n.dot\r\n"
                               % node.name)
            res = send_message(node.smtp_port, "basic@example.org", [rcpt], msg, host=node.host,
                               timeout=40)
            self.assertReply(res, 250, "2.0.0", "%s answered %r" % (node.name, res))
            sent[tid] = (node, rcpt, sha256_hex(msg))
        return sent

    def check_delivered_once(self, sent):
        for tid, (node, rcpt, sha) in sent.items():
            (rec,) = self.cluster.sink.wait_test_id(tid, timeout=30)
            self.assertEqual(rec["rcpt"], rcpt)
            self.assertEqual(rec["sha256_after_received"], sha, "body changed via %s" % node.name)
        self.cluster.wait_converged(60)
        for tid, (node, _, _) in sent.items():
            self.assertEqual(len(self.cluster.sink.by_test_id(tid)), 1,
                             "message through %s delivered more than once" % node.name)

    def test_a_status_agrees(self):
        leader = self.cluster.wait_leader()
        sts = self.cluster.statuses()
        self.assertEqual({field(s, "leader_id") for s in sts.values()}, {leader.id})
        self.assertEqual(len({field(s, "term") for s in sts.values()}), 1, sts)
        states = sorted(field(s, "state") for s in sts.values())
        self.assertEqual(states, ["follower", "follower", "leader"])
        for s in sts.values():
            members = field(s, "members", [])
            self.assertEqual(sorted(int(field(m, "id")) for m in members), [1, 2, 3])
            self.assertEqual(field(s, "leader_control"),
                             harness.hostport(HOST, leader.control_port), s)

    def test_b_leader_delivers_once(self):
        leader = self.cluster.wait_leader()
        self.check_delivered_once(self.send_each([leader], "lead"))

    def test_c_followers_forward(self):
        if not self.cluster.forwarding:
            self.skipTest("this hamrd has no follower forwarding ([listen] peer unknown)")
        leader = self.cluster.wait_leader()
        followers = [n for n in self.cluster.nodes if n is not leader]
        sent = self.send_each(followers, "fwd")
        sent.update(self.send_each(self.cluster.nodes, "all"))
        self.check_delivered_once(sent)

    def test_d_digests_equal(self):
        sts = self.cluster.wait_converged(60)
        self.assertEqual(len({field(s, "queue_digest") for s in sts.values()}), 1, sts)
        self.assertEqual(len(sts), 3)

    def test_e_transfer_to_chosen_node(self):
        for _ in range(2):
            leader = self.cluster.wait_leader()
            target = next(n for n in self.cluster.nodes if n is not leader)
            new = self.cluster.transfer(target)
            self.assertIs(new, target)
            sts = self.cluster.statuses()
            self.assertEqual({field(s, "leader_id") for s in sts.values()}, {target.id})
            # The new leader takes mail at once (bounded retries of 4xx).
            self.cluster.probe(target, timeout=15)

    def test_f_transfer_via_follower(self):
        if not self.cluster.forwarding:
            self.skipTest("this hamrd has no follower forwarding; transfer redirect not tested")
        leader = self.cluster.wait_leader()
        others = [n for n in self.cluster.nodes if n is not leader]
        via, target = others[0], others[1]
        via.ctl("transfer", str(target.id), timeout=20)
        new = harness.wait_for(lambda: (lambda n: n if n is target else None)(
            self.cluster.agreed_leader()), 20, "node %d to lead" % target.id)
        self.assertIs(new, target)
        # The old leader is a follower now: it forwards to the new one.
        self.check_delivered_once(self.send_each([leader], "after-transfer"))

    def test_g_short_load_through_all(self):
        load = cluster.LoadGen(self.cluster, "basic", threads=4, max_messages=150,
                               max_seconds=40).start()
        load.wait_ok(100, 60)
        load.stop()
        res = cluster.oracle_run(self, self.cluster, load, "basic-load")
        self.assertEqual(res.permfail, 0)
        self.assertEqual(res.tempfail + res.indoubt + res.connerr, 0,
                         "a healthy cluster answered something other than 250: %s"
                         % [a for a in load.attempts if not a.ok][:5])
        if self.cluster.forwarding:
            self.assertEqual({a.node for a in load.ok()}, {1, 2, 3})


if __name__ == "__main__":
    unittest.main(verbosity=2)
