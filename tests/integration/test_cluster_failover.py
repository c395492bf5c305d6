#!/usr/bin/python3
"""test_cluster_failover.py - a 3-node hamr cluster under load through crashes and handovers.

Each case runs the load generator of cluster.py (6 clients, unique
X-Test-Id per message, round robin over the nodes that take mail), injects
one kind of fault, heals it, waits until every queue is empty and every
digest equal, and runs the oracle of SECURITY.md section 1: nothing lost,
nothing unexpected, nothing corrupted, and duplicates only around a
leader-changing event (at most cluster.DUP_PER_EVENT per event, each one's
first copy within cluster.DUP_WINDOW seconds of it); zero 5xx throughout.

  a  kill -9 of the leader (SECURITY.md F1/F2): a new leader within a bound,
     the time from the kill to the first new 250 is measured and bounded;
     the old leader restarts on its data_dir and catches up (digest equal).
  b  kill -9 of a follower (F3): zero 5xx; the surviving nodes answer no
     4xx to transactions begun after the kill settled; the follower
     restarts and catches up. Duplicates: none (the leader never changed).
  c  five "hamrctl transfer" 2 s apart (F14): zero 5xx, the longest gap
     between 250s is measured and bounded; duplicates at most the
     deliveries in flight at each transfer.
  d  rolling restart (F13): every node in turn gets SIGTERM (exit 0), is
     started again and must be back and caught up before the next one;
     stopping the leader counts as a leader-changing event.
  e  leader paused (F12): kill -STOP the leader for PAUSE_SECONDS (several
     election timeouts), then kill -CONT. The two others elect a new leader
     while it sleeps (time measured); the old one must step down once awake
     (hamrctl status: follower of the new term, within a bound); zero 5xx;
     the oracle finds nothing lost (no 250 for an entry that never
     committed) and duplicates at most the deliveries leased (in flight)
     at the pause (the old leader's count just before the stop, or the
     new leader's just after its election, whichever is larger); digests
     equal.

The cases can run one at a time (ctest does that: python3 THIS Case.test_x)
or together; each starts by bringing every node back up.
"""

import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from cluster import ELECTION_TIMEOUT, LEASE_TIME, cluster_log  # noqa: E402

# Targets for CI on 2 cores under ASan (SECURITY.md section 3 asks for an election
# within 3 s and new mail within 5 s; the bounds leave room for a loaded machine).
NEW_LEADER_BOUND = 10.0
FIRST_250_BOUND = 15.0
TRANSFER_GAP_BOUND = 8.0
CATCH_UP_BOUND = 60.0
PAUSE_SECONDS = 5.0  # the leader's SIGSTOP (five election timeouts)
STEP_DOWN_BOUND = 5.0  # SIGCONT -> the old leader reports a follower of the new term



class ClusterFailoverTest(cluster.ClusterTestCase):
    def setUp(self):
        """setUp - every node running, one agreed leader, mail accepted."""
        super().setUp()
        self.revive_all()

    def start_load(self, name, seconds=90):
        # Paced so that the count cannot run out before the time does, however
        # fast the build under test is: at most 6 x 25 messages a second.
        self.load = cluster.LoadGen(self.cluster, name, threads=6, max_messages=25000,
                                    max_seconds=seconds, pace=0.04).start()
        self.load.wait_ok(15, 30)
        return self.load

    def assert_no_5xx(self):
        bad = self.load.select(lambda a: a.permfail)
        self.assertEqual(bad, [], "5xx under load: %r" % bad[:5])

    def test_a_kill_leader(self):
        old = self.cluster.wait_leader()
        load = self.start_load("fo-a")
        t_kill, wall_kill = time.monotonic(), time.time()
        self.cluster.kill9(old)
        new = self.cluster.wait_leader(NEW_LEADER_BOUND, exclude=(old,))
        t_elected = time.monotonic() - t_kill
        load.wait_ok(10, FIRST_250_BOUND, after=t_kill)
        first = load.first_ok_after(t_kill)
        cluster_log("failover: leader %s killed, %s leads after %.2fs, first new 250 after %.2fs"
                    % (old.name, new.name, t_elected, first))
        self.assertLessEqual(first, FIRST_250_BOUND)
        self.cluster.restart(old)
        t_restart = time.monotonic()
        self.cluster.wait_caught_up(old, CATCH_UP_BOUND)
        cluster_log("failover: %s caught up %.2fs after restart" % (old.name,
                                                                   time.monotonic() - t_restart))
        load.wait_ok(10, 20, after=time.monotonic())
        load.stop()
        self.assert_no_5xx()
        res = cluster.oracle_run(self, self.cluster, load, "failover-kill-leader",
                                 events=[wall_kill], timeout=LEASE_TIME * 3 + 60)
        sys.stderr.write("failover-kill-leader: new leader %.2fs, first new 250 %.2fs, dup=%d\n"
                         % (t_elected, first, res.dup))

    def test_b_kill_follower(self):
        leader = self.cluster.wait_leader()
        follower = next(n for n in self.cluster.nodes if n is not leader)
        load = self.start_load("fo-b")
        t_kill = time.monotonic()
        self.cluster.kill9(follower)
        load.wait_ok(20, 30, after=t_kill)
        cluster.pause(max(0.0, t_kill + 3.0 - time.monotonic()))  # down for 3 s at least
        self.assertIs(self.cluster.wait_leader(5), leader, "the leader changed")
        self.cluster.restart(follower)
        self.cluster.wait_caught_up(follower, CATCH_UP_BOUND)
        load.wait_ok(10, 20, after=time.monotonic())
        load.stop()
        self.assert_no_5xx()
        settle = t_kill + ELECTION_TIMEOUT
        survivors_4xx = load.select(lambda a: a.node != follower.id and a.tempfail
                                    and a.t_start >= settle)
        cluster_log("follower kill: survivors' 4xx after the kill: %d, in total: %d" % (
            len(survivors_4xx), len(load.select(lambda a: a.node != follower.id and a.tempfail))))
        self.assertEqual(survivors_4xx, [], "4xx from nodes that stayed up")
        cluster.oracle_run(self, self.cluster, load, "failover-kill-follower", events=[])

    def test_c_repeated_transfer(self):
        load = self.start_load("fo-c")
        transfers = 5
        times, events = [], []
        for k in range(transfers):
            leader = self.cluster.wait_leader()
            target = self.cluster.node(leader.id % 3 + 1)
            t0 = time.monotonic()
            events.append(time.time())
            self.assertIs(self.cluster.transfer(target), target)
            times.append(time.monotonic() - t0)
            load.wait_ok(3, 15, after=time.monotonic())
            cluster.pause(max(0.0, 2.0 - (time.monotonic() - t0)))
        load.wait_ok(10, 20, after=time.monotonic())
        load.stop()
        self.assert_no_5xx()
        ends = sorted(a.t_end for a in load.ok())
        gap = max((b - a for a, b in zip(ends, ends[1:])), default=0.0)
        cluster_log("transfer: %d transfers took %s s; longest gap between 250s %.2fs"
                    % (transfers, ["%.2f" % t for t in times], gap))
        self.assertLessEqual(gap, TRANSFER_GAP_BOUND)
        res = cluster.oracle_run(self, self.cluster, load, "failover-transfer", events=events,
                                 timeout=LEASE_TIME * 3 + 60)
        sys.stderr.write("failover-transfer: %d transfers, longest gap %.2fs, dup=%d\n"
                         % (transfers, gap, res.dup))

    def test_d_rolling_restart(self):
        load = self.start_load("fo-d", seconds=150)
        events = []
        for node in self.cluster.nodes:
            was_leader = self.cluster.wait_leader() is node
            if was_leader:
                events.append(time.time())
            t0 = time.monotonic()
            self.cluster.stop(node)
            self.cluster.wait_leader(NEW_LEADER_BOUND, exclude=(node,))
            self.cluster.restart(node)
            self.cluster.wait_leader(NEW_LEADER_BOUND + 20)
            self.cluster.wait_caught_up(node, CATCH_UP_BOUND)
            cluster_log("rolling: %s%s back and caught up after %.2fs" % (
                node.name, " (leader)" if was_leader else "", time.monotonic() - t0))
            load.wait_ok(5, 20, after=time.monotonic())
        load.stop()
        self.assert_no_5xx()
        res = cluster.oracle_run(self, self.cluster, load, "failover-rolling", events=events,
                                 timeout=LEASE_TIME * 3 + 60)
        sys.stderr.write("failover-rolling: leader stopped %d time(s), dup=%d\n"
                         % (len(events), res.dup))

    def test_e_pause_leader(self):
        old = self.cluster.wait_leader()
        others = [n for n in self.cluster.nodes if n is not old]
        load = self.start_load("fo-e")
        before = self.cluster.status(old)
        leased = int(harness.field(before, "queue_rcpts_leased", 0) or 0)
        term0 = int(harness.field(before, "term", 0) or 0)
        t_stop, wall_stop = time.monotonic(), time.time()
        cluster_log("SIGSTOP %s (leader of term %d, %d deliveries leased)"
                    % (old.name, term0, leased))
        os.kill(old.proc.popen.pid, signal.SIGSTOP)
        try:
            new = self.cluster.wait_leader(NEW_LEADER_BOUND, nodes=others)
            t_elected = time.monotonic() - t_stop
            # Leases the old leader had committed are in the replicated state:
            # the deliveries it may still finish when it wakes up.
            leased = max(leased, int(harness.field(self.cluster.status(new),
                                                   "queue_rcpts_leased", 0) or 0))
            cluster.pause(max(0.0, t_stop + PAUSE_SECONDS - time.monotonic()))
            new_term = int(harness.field(self.cluster.status(new), "term", 0) or 0)
        finally:
            t_cont = time.monotonic()
            os.kill(old.proc.popen.pid, signal.SIGCONT)
            cluster_log("SIGCONT %s after %.2fs" % (old.name, t_cont - t_stop))

        def stepped_down():
            s = self.cluster.status(old)
            if s is None or harness.field(s, "state") == "leader":
                return None
            if int(harness.field(s, "term", 0) or 0) < new_term:
                return None
            return s

        woke = harness.wait_for(stepped_down, STEP_DOWN_BOUND, "%s to step down" % old.name,
                                interval=0.05)
        t_down = time.monotonic() - t_cont
        self.assertIs(self.cluster.wait_leader(NEW_LEADER_BOUND), new,
                      "the woken old leader took leadership back")
        # While it slept, sessions through it could not have been answered; the
        # ones answered 250 after it woke must be committed (the oracle's lost).
        during = load.select(lambda a: a.node == old.id and a.t_start < t_cont < a.t_end)
        self.cluster.wait_caught_up(old, CATCH_UP_BOUND)
        load.wait_ok(10, 20, after=time.monotonic())
        load.stop()
        self.assert_no_5xx()
        cluster_log("pause: %s stopped %.2fs, %s leads term %d after %.2fs, old leader a %s of "
                    "term %s %.2fs after SIGCONT; %d sessions through it spanned the wake-up: %s"
                    % (old.name, t_cont - t_stop, new.name, new_term, t_elected,
                       harness.field(woke, "state"), harness.field(woke, "term"), t_down,
                       len(during), sorted({(a.code, a.stage) for a in during}, key=str)))
        res = cluster.oracle_run(self, self.cluster, load, "failover-pause-leader",
                                 events=[wall_stop, time.time() - (time.monotonic() - t_cont)],
                                 timeout=LEASE_TIME * 3 + 60)
        self.assertLessEqual(res.dup, leased, "duplicates beyond the %d deliveries in flight "
                             "at the pause" % leased)
        sys.stderr.write("failover-pause-leader: new leader %.2fs, old stepped down %.2fs after "
                         "SIGCONT, leased at pause %d, dup=%d\n"
                         % (t_elected, t_down, leased, res.dup))


if __name__ == "__main__":
    unittest.main(verbosity=2)
