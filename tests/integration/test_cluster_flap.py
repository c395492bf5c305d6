#!/usr/bin/python3
"""test_cluster_flap.py - flapping partitions and one-way loss in a 3-node hamr cluster
(SECURITY.md F6).

Every node runs in its own network namespace (cluster.NetLab, as in
test_cluster_partition.py); nftables rules inside a node's namespace drop
its packets to and from chosen peers, or in one direction only. The load
(6 clients, round robin over all three nodes) runs throughout.

  a  flapping: every 2-4 s the rules change, about 25 s in all: the leader
     is cut off from both others, healed, a follower is cut off, healed,
     then a "ring" (one pair of nodes cannot talk, so the two ends each see
     a different majority through the third) that moves from pair to pair,
     healed, and again. After healing: elections (growth of the highest
     term) <= toggles + 1, at most one leader per term (every "consensus
     event=leader" line of every node's log, and every status the monitor
     polled), duplicates at most DUP_PER_EVENT per leader change, the
     oracle clean and every digest equal.
  b  one-way loss: the leader's packets to one follower are dropped for
     about 6 s, then (after a short heal) the packets from that follower to
     the leader are dropped for about 6 s. The follower hears nothing from
     the leader, yet pre-vote must keep it from deposing a healthy leader:
     the term grows by at most the leader changes seen + 1, at most one
     leader per term, oracle clean, digests equal.

The measured figures (toggles, elections, leader changes, resume time after
healing, duplicates) are printed on stderr. Skipped, with the reason, when
namespaces or nft cannot be used (not root, no nftables).
"""

import os
import random
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
from cluster import DUP_PER_EVENT, LEASE_TIME, cluster_log  # noqa: E402

FLAP_SECONDS = 25.0  # how long the rules keep changing
FLAP_MIN, FLAP_MAX = 2.0, 4.0  # seconds between two changes
ONEWAY_SECONDS = 6.0  # each direction of the one-way loss
NEW_LEADER_BOUND = 15.0
RESUME_BOUND = 15.0  # heal -> first 250 of a transaction begun after it


class ClusterFlapTest(cluster.NetLabTestCase):
    def start_load(self, name, seconds=90):
        self.load = cluster.LoadGen(self.cluster, name, threads=6, max_messages=20000,
                                    max_seconds=seconds, targets=self.cluster.live_nodes,
                                    pace=0.05, smtp_timeout=30).start()
        self.load.wait_ok(10, 30)
        return self.load

    def current_leader(self):
        """current_leader - the freshest leader the monitor saw (any node if none)."""
        return self.cluster.leader_hint() or self.cluster.nodes[0]

    def assert_one_leader_per_term(self, marks, t0):
        """assert_one_leader_per_term - from the logs (exhaustive) and the polled statuses.

        Returns the terms in which some node became leader since marks.
        """
        terms = self.cluster.leader_terms(since=marks)
        two = {t: sorted(ids) for t, ids in terms.items() if len(ids) > 1}
        self.assertEqual(two, {}, "two leaders in one term (logs)")
        polled = {}
        for _, node_id, state, term, _ in self.cluster.history_since(t0):
            if state == "leader":
                polled.setdefault(int(term or 0), set()).add(node_id)
        two = {t: sorted(ids) for t, ids in polled.items() if len(ids) > 1}
        self.assertEqual(two, {}, "two leaders in one term (hamrctl status)")
        return sorted(terms)

    def heal_and_settle(self, load):
        """heal_and_settle - heal, wait for one agreed leader and new 250s; the resume time."""
        t_heal = time.monotonic()
        self.lab.heal()
        self.cluster.wait_leader(NEW_LEADER_BOUND)
        load.wait_ok(5, RESUME_BOUND + 10, after=t_heal)
        resumed = load.first_ok_after(t_heal)
        self.assertLessEqual(resumed, RESUME_BOUND)
        return resumed

    def test_a_flapping(self):
        c, lab = self.cluster, self.lab
        rnd = random.Random(6)
        load = self.start_load("flap-a")
        marks, t0 = c.log_marks(), time.monotonic()
        term0 = c.max_term()
        toggles, events = [], []

        pair = [1, 2]  # the ring's cut pair

        def ring(a, b):
            lab.heal()
            lab.isolate(a, [b])
            pair[:] = [a, b]
            third = 6 - a - b
            return "ring: n%d-n%d cut (n%d sees {%d,%d}, n%d sees {%d,%d}, n%d sees all)" % (
                a, b, a, a, third, b, b, third, third)

        def cut_leader():
            lab.heal()
            leader = self.current_leader()
            lab.isolate(leader.id, [1, 2, 3])
            return "leader n%d isolated" % leader.id

        def cut_follower():
            lab.heal()
            leader = self.current_leader()
            f = next(n for n in c.nodes if n is not leader)
            lab.isolate(f.id, [1, 2, 3])
            return "follower n%d isolated" % f.id

        def ring_from_leader():
            leader = self.current_leader().id
            return ring(leader, leader % 3 + 1)

        def ring_move():
            # Move the cut one pair on: (1,2) -> (2,3) -> (3,1) -> (1,2).
            return ring(pair[0] % 3 + 1, pair[1] % 3 + 1)

        def heal():
            lab.heal()
            return "healed"

        plan = [cut_leader, heal, cut_follower, heal, ring_from_leader, ring_move, ring_move,
                heal, cut_leader, heal, ring_from_leader, heal]
        for step in plan:
            if time.monotonic() - t0 >= FLAP_SECONDS:
                break
            events.append(time.time())
            what = step()
            toggles.append(what)
            cluster_log("flap %d: %s" % (len(toggles), what))
            cluster.pause(rnd.uniform(FLAP_MIN, FLAP_MAX))
        resumed = self.heal_and_settle(load)
        term1 = c.max_term()
        load.wait_ok(10, 20, after=time.monotonic())
        load.stop()
        self.assertEqual(load.select(lambda a: a.permfail), [], "5xx while flapping")

        elections = term1 - term0
        lead_terms = self.assert_one_leader_per_term(marks, t0)
        n_toggles = len(toggles) + 1  # the final heal
        cluster_log("flap: %d toggles, term %d -> %d (%d elections), leaders in terms %s, "
                    "first 250 %.2fs after the final heal"
                    % (n_toggles, term0, term1, elections, lead_terms, resumed))
        self.assertLessEqual(elections, n_toggles + 1, "more elections than toggles + 1")
        res = cluster.oracle_run(self, c, load, "flap-toggle", events=events,
                                 timeout=LEASE_TIME * 3 + 60)
        self.assertLessEqual(res.dup, DUP_PER_EVENT * len(lead_terms),
                             "duplicates beyond the %d leader changes" % len(lead_terms))
        sys.stderr.write("flap-toggle: toggles=%d elections=%d leader_changes=%d "
                         "resume_after_heal=%.2fs dup=%d\n"
                         % (n_toggles, elections, len(lead_terms), resumed, res.dup))

    def test_b_oneway_loss(self):
        c, lab = self.cluster, self.lab
        leader = c.wait_leader()
        follower = next(n for n in c.nodes if n is not leader)
        load = self.start_load("flap-b")
        marks, t0 = c.log_marks(), time.monotonic()
        term0 = c.max_term()
        events = [time.time()]
        cluster_log("oneway: dropping %s -> %s" % (leader.name, follower.name))
        t_drop = time.monotonic()
        lab.drop_oneway(leader.id, [follower.id], "output")
        cluster.pause(ONEWAY_SECONDS)
        lab.heal()
        t_heal1 = time.monotonic()
        c.wait_leader(NEW_LEADER_BOUND)
        cluster.pause(1.0)
        leader2 = c.wait_leader(NEW_LEADER_BOUND)
        events.append(time.time())
        cluster_log("oneway: dropping %s -> %s (inbound at the leader)"
                    % (follower.name, leader2.name))
        if follower is leader2:  # the follower took over after all: drop towards it
            follower = next(n for n in c.nodes if n is not leader2)
        t_drop2 = time.monotonic()
        lab.drop_oneway(leader2.id, [follower.id], "input")
        cluster.pause(ONEWAY_SECONDS)
        t_heal2 = time.monotonic()
        resumed = self.heal_and_settle(load)
        c.wait_caught_up(follower, 60)
        term1 = c.max_term()
        final = c.wait_leader(NEW_LEADER_BOUND)
        load.wait_ok(10, 20, after=time.monotonic())
        load.stop()
        self.assertEqual(load.select(lambda a: a.permfail), [], "5xx under one-way loss")

        lead_terms = self.assert_one_leader_per_term(marks, t0)
        changes = len(lead_terms)
        cut_tempfail = len(load.select(lambda a: a.node == follower.id and not a.ok))
        for what, t_a, t_b in (("out", t_drop, t_heal1), ("in", t_drop2, t_heal2)):
            during = load.select(lambda a, t_a=t_a, t_b=t_b: a.node == follower.id
                                 and t_a <= a.t_start < t_b)
            others = load.select(lambda a, t_a=t_a, t_b=t_b: a.node != follower.id
                                 and t_a <= a.t_start < t_b)
            cluster_log("oneway %s: %d sessions through %s begun during the loss, longest "
                        "%.2fs, replies %s; %d through the others"
                        % (what, len(during), follower.name,
                           max((a.t_end - a.t_start for a in during), default=0.0),
                           sorted({(a.code, a.stage) for a in during}, key=str), len(others)))
        cluster_log("oneway: leader %s -> %s -> %s, term %d -> %d, leader changes %d (terms %s); "
                    "%d failed attempts through %s; first 250 %.2fs after healing"
                    % (leader.name, leader2.name, final.name, term0, term1, changes, lead_terms,
                       cut_tempfail, follower.name, resumed))
        self.assertLessEqual(term1 - term0, changes + 1,
                             "the term grew beyond the leader changes: pre-vote did not hold")
        res = cluster.oracle_run(self, c, load, "flap-oneway", events=events,
                                 timeout=LEASE_TIME * 3 + 60)
        self.assertLessEqual(res.dup, DUP_PER_EVENT * changes,
                             "duplicates beyond the %d leader changes" % changes)
        sys.stderr.write("flap-oneway: leader kept=%s term_growth=%d leader_changes=%d "
                         "resume_after_heal=%.2fs dup=%d\n"
                         % (final is leader, term1 - term0, changes, resumed, res.dup))


if __name__ == "__main__":
    unittest.main(verbosity=2)
