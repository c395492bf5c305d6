#!/usr/bin/python3
"""test_cluster_spread.py - every node delivers (cluster feature level 6, relay_spread.c).

From level 6 the leader leases each delivery to the node with the most free
delivery slots that can reach its next hop; the holder streams the body from
its own store, renews its leases through its PeerReport every second, stops a
delivery before its final dot once its lease has run out by its own clock
(lease_time / 5 short of the leader's end: "delivery stopped ... reason=\"lease
ran out\""), and the leader leases recipients whose lease ran out without an
Outcome again, which every node logs as "lease ran out id=ID to=<RCPT> lease=
node=N new_lease= new_node=M possible duplicate": the one window in which a
message may reach the next hop twice.

Every case ends with the oracle of SECURITY.md section 1 (cluster.oracle_check,
after every queue is empty and every digest equal): nothing acknowledged is
lost, nothing unexpected or corrupted is delivered, and a message delivered
more than once must have a "lease ran out id=ITS_QUEUE_ID ... possible
duplicate" line in some node's log (spread_oracle). The load records the queue
id of each 250 ("queued as"), which is how sink records, log lines and load
attempts are matched. [delivery] lease_time is LEASE (6 s) so that the cases
are quick.

ClusterSpreadTest (three nodes on 127.0.0.1):
  a_spread  SPREAD_MESSAGES messages through all three nodes to a normal next
     hop: every node delivered some ("delivery id=... status=sent" lines of
     the load's queue ids in its log), the leader's "hamrctl status" shows one
     "deliverers:" line per node, each with deliveries leased; no lease ran out;
     oracle: nothing lost, no duplicate.
  b_kill_delivering_follower  a slow next hop (sink --data-start-delay and
     --data-delay); once the first final dots have reached it and a follower has
     deliveries running (hamrctl status deliveries_running), that follower is
     killed with -9 (some of its deliveries wait for the reply to their final
     dot: the duplicate window). The leases it held run out and
     are leased again (the "lease ran out ... node=VICTIM" lines of the
     survivors name them): every one is delivered by a survivor within
     2 * LEASE + TAKEOVER_SLACK of the kill (measured, from the survivors'
     "status=sent" lines); duplicates only with a "possible duplicate" line;
     nothing lost. The follower restarts and catches up (digests equal).

ClusterSpreadNetTest (the nodes in network namespaces, cluster.NetLab: root,
ip netns and nft, else it skips; the sink listens on the hub, 10.77.0.1):
  a_partition_delivering_follower  the slow next hop; once the first wave of
     deliveries has reached it, a follower with deliveries running is cut off
     from its peers (its way to the next hop stays open): its leases are no
     longer renewed, so it ends them (deliveries_running 0), stopping at least
     one before its final dot ("delivery stopped", deliveries_stopped), and
     none of its final dots reaches the next hop after it logged "lease running
     out" for that message (the sink records the client address of each copy);
     the majority leases its recipients again and delivers them; healed, every
     digest is equal and the oracle finds duplicates only where a lease ran out.
  c_partition_fresh_bodies  the same, the follower cut off in the first wave:
     messages leased the moment they were accepted, whose bodies are still in
     memory (not streamed from the store) when the delivery starts.
  b_egress_blocked  one follower's connections to the next hop are refused
     (nft in its namespace: TCP reset to the sink's port on the hub): its
     deliveries fail at connect, it suspends the destination ("destination
     ...: suspended"), the leader's status shows it suspended for that member,
     and after SUSPEND_SETTLE it starts at most PROBES_AFTER_SUSPEND deliveries
     to it; the whole load is delivered by the other nodes within
     DRAIN_BOUND of the load's end. Healed, a second load of about 20 s (longer
     than the suspension, RETRY) is delivered too (the node's share printed).
     Oracle: nothing lost, no duplicate.
  d_egress_healed_resumes  the same, and the node must deliver some of the
     second load: its suspension ends after RETRY, and a probe that gets a
     session lifts it (relay_sched.c).
  e_clock_unknown  a node that knows the leader but not yet the cluster time
     takes no mail (relay_clock_usable): a follower is stopped and started again
     with its connections to the others' peer ports refused (raft still flows),
     so it follows the leader but no report of its is answered. Once its status
     shows the leader, cluster level 6 and clock_known false, MAIL FROM gets
     "451 4.3.0 Error: queue not available, try again later" and /health/ready
     503 "not ready: cluster time not known yet". Healed, MAIL gets 250 within CLOCK_BOUND;
     a small load through that node only, then the oracle: nothing lost, no
     duplicate.

ClusterSpreadNoSlotsTest (three nodes on 127.0.0.1, node NO_SLOTS_NODE with
[delivery] delivery_slots = 0):
  a_no_slots  NO_SLOTS_MESSAGES messages through all three nodes: the node
     without slots answers its share with 250 but delivers none (no "status=sent"
     line of the load, hamr_deliveries_total unchanged, the leader's
     "deliverers:" line for it: 0 slots, nothing leased); the two others deliver
     everything (oracle: nothing lost, no duplicate; their status=sent lines
     add up to the acknowledged messages).

ClusterSpreadConnsTest (three nodes on 127.0.0.1, [delivery] max_per_destination
CONNS_PER_DEST):
  a_conns_limit  CONNS_MESSAGES messages through all three nodes to a slow next hop
     (every connection stays busy a while): the next hop never has more than
     CONNS_PER_DEST connections open at once from the whole cluster (the sink's
     "sessions open=N" lines; a connection that said QUIT no longer counts), though
     each node alone may open that many; it had that many at some moment, and
     more than one node delivered. Oracle: nothing lost, no duplicate.

ClusterSpreadRateTest (three nodes on 127.0.0.1, [delivery] rate_per_destination
RATE_PER_MINUTE):
  a_rate_limit  RATE_MESSAGES messages through all three nodes, answered within a
     second or two, to a slow next hop (deliveries overlap): the next hop gets them at
     the cluster's rate, not each node's (relay_rate.c: the leader takes a token
     per lease): by the sink's times, no span of messages is larger than the
     bucket (a second's worth) plus the rate times the span and RATE_JITTER (the
     time from lease to delivery varies), and the whole load took at least
     (RATE_MESSAGES - a second's worth) / rate - RATE_JITTER; more than one node
     delivered. Oracle: nothing lost, no duplicate.

Run one case with python3 THIS Class.test_x (ctest does, one entry per case).
"""

import calendar
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from cluster import cluster_log  # noqa: E402
from harness import field, wait_for  # noqa: E402

LEASE = 6.0  # [delivery] lease_time of these clusters, seconds
LEVEL_BOUND = 60.0  # every node at cluster feature level 6
SPREAD_MESSAGES = 600
PARTITION_MESSAGES = 12
# [delivery] max_per_destination of ClusterSpreadNetTest: a connection for each node, so
# that each gets deliveries from the start (the egress cases need the blocked node to try).
PER_DEST = 3
# The first wave: a delivery on each of the PER_DEST connections the whole cluster may
# have to the next hop; the rest of the 4 * PER_DEST leased at once wait behind them on
# their holders, and start once those are answered, with bodies from the store.
FIRST_WAVE = PER_DEST
RETRY = "10s"  # [delivery] retry_min and retry_max of ClusterSpreadNetTest
HEALED_MESSAGES = 240  # after the heal: 4 clients, 0.3 s apart (about 20 s)
LOAD_BOUND = 150.0  # seconds a load may take to be answered
DRAIN_BOUND = 90.0  # the load's end -> every queue empty
TAKEOVER_SLACK = 12.0  # beyond 2 * LEASE: scan, lease, the slow next hop's waits
RUNNING_BOUND = 60.0  # a follower with deliveries running
SUSPEND_BOUND = 30.0  # egress blocked -> the destination suspended on that node
SUSPEND_SETTLE = 3.0  # suspended -> the leader knows (reports every second)
PROBES_AFTER_SUSPEND = 3  # deliveries the blocked node may start after SUSPEND_SETTLE
DOT_EPSILON = 0.3  # seconds: a final dot logged by the sink this late is after the lapse
RESTART_BOUND = 45.0  # a restarted follower follows the leader again
CLOCK_BOUND = 15.0  # peer ports healed -> the follower knows the cluster time (MAIL 250)
CLOCK_MESSAGES = 12  # the load through that follower once it knows the time
NO_SLOTS_MESSAGES = 150
NO_SLOTS_NODE = 3  # the node of ClusterSpreadNoSlotsTest with [delivery] delivery_slots = 0
CONNS_PER_DEST = 2  # [delivery] max_per_destination of ClusterSpreadConnsTest
CONNS_MESSAGES = 60
RATE_PER_MINUTE = 120  # [delivery] rate_per_destination of ClusterSpreadRateTest: 2 a second
RATE_MESSAGES = 24
RATE_JITTER = 1.5  # seconds: lease to final dot, more for some deliveries than for others
SESSIONS_RE = re.compile(r"^sink: sessions open=(\d+) ", re.M)
TRY_AGAIN = "451 4.3.0 Error: queue not available, try again later"
# The slow next hop: a wait before 354 (the body not yet sent: a lease running out
# then stops the delivery) and one after the final dot (the message taken: a holder
# gone then is the duplicate window). For the partition the wait before 354 is longer
# than a holder's end of a lease (LEASE * 4 / 5), so that every delivery waiting for
# its 354 when its node is cut off outlives its lease (renewed, it would not), and
# longer by more than the second on whose tick the holder logs "lease running out":
# a final dot sent after the end is then also after that line.
SLOW_START = 1.0
SLOW_START_PAST_LEASE = LEASE * 4 / 5 + 2.2
SLOW_DOT = 1.5

LOG_TIME = r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z "
SENT_RE = re.compile(LOG_TIME + r".*\bdelivery id=(\S+) to=<([^>]*)> .*\bstatus=sent\b", re.M)
TRIED_RE = re.compile(LOG_TIME + r".*\bdelivery id=(\S+) to=<([^>]*)> .*\bstatus=(\w+)", re.M)
LAPSE_RE = re.compile(LOG_TIME + r".*\blease ran out id=(\S+) to=<([^>]*)> lease=([0-9a-f]+) "
                      r"node=(\d+) new_lease=([0-9a-f]+) new_node=(\d+) possible duplicate", re.M)
STOPPED_RE = re.compile(LOG_TIME + r".*\bdelivery stopped id=(\S+) lease=([0-9a-f]+) "
                        r"dest=(\S+) reason=\"lease ran out\"", re.M)
RUNNING_OUT_RE = re.compile(LOG_TIME + r".*\blease running out id=(\S+) lease=([0-9a-f]+) ", re.M)
SUSPENDED_RE = re.compile(LOG_TIME + r".*\bdestination (\S+): suspended\b", re.M)
SPREAD_NOTE_RE = re.compile(r"is behind in the log|has caught up|restarted \(new boot id\)|"
                            r"destination \S+: (suspended|still suspended|resumed)|probe")
DELIVERER_RE = re.compile(r"^(?:deliverers:)?\s+(\d+): (\d+) running of (\d+) slots, "
                          r"(\d+) leased, heard ([\d.]+) s ago", re.M)


def log_time(stamp):
    """log_time - a hamrd log stamp (UTC, "2026-01-02T03:04:05.678") as Unix seconds."""
    return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + int(stamp[20:]) / 1e3


def log_since(node, marks):
    """log_since - node's log after its offset in marks (a Cluster.log_marks() result)."""
    if node.proc is None:
        return ""
    return node.proc.log_text()[marks.get(node.id, 0):]


class SpreadTestCase(cluster.ClusterTestCase):
    """SpreadTestCase - a 3-node cluster at level 6 with [delivery] lease_time LEASE and
    /metrics; helpers to swap the next hop and to run the oracle with the lapse lines."""

    DELIVERY = {"lease_time": "%ds" % LEASE}

    @classmethod
    def make_cluster(cls):
        c = cluster.Cluster(cls.env, 3, lab=getattr(cls, "lab", None),
                            overrides={"delivery": dict(cls.DELIVERY)})
        c.add_http()
        return c

    def setUp(self):
        super().setUp()
        self.revive_all()
        self.use_sink()

        def level6():
            sts = self.cluster.statuses()
            return all(s is not None and int(field(s, "cluster_level", 0) or 0) >= 6
                       for s in sts.values())

        wait_for(level6, LEVEL_BOUND, "every node at cluster feature level 6", interval=0.25)
        self.cluster.wait_converged(DRAIN_BOUND)
        self.marks = self.cluster.log_marks()

    # --- the next hop -------------------------------------------------------

    def use_sink(self, **options):
        """use_sink - the next hop becomes a sink with options (harness.Sink keywords) on the
        same address; the one before is stopped (its records still count for the oracle)."""
        c = self.cluster
        old = c.sink
        want = sorted(options.items())
        if getattr(old, "spread_options", []) == want and old.proc is not None \
                and old.proc.alive():
            return old
        if old.proc is not None and old.proc.alive():
            old.stop()
        name = "sink-%d" % len(self.env.sinks)
        c.sink = self.env.sink(name=name, host=old.host, port=old.port, **options).start()
        c.sink.spread_options = want
        cluster_log("next hop: %s %s" % (name, options or "(answers at once)"))
        return c.sink

    def records(self):
        """records - every sink record of this class (each sink used so far)."""
        return [r for s in self.env.sinks for r in s.records()]

    # --- load ---------------------------------------------------------------

    def run_load(self, name, count, threads=6, pace=0.02, wait=True, targets=None):
        """run_load - count messages through the nodes that take mail; with wait, returns once
        every one was answered (bounded by LOAD_BOUND). Nothing is resent."""
        load = cluster.LoadGen(self.cluster, name, threads=threads, max_messages=count,
                               max_seconds=LOAD_BOUND, pace=pace, targets=targets)
        self.loads.append(load)
        load.start()
        if wait:
            self.finish_load(load)
        return load

    def finish_load(self, load):
        def finished():
            self.env.check_nodes_alive()  # a node killed by the test is not checked
            return not load.running()

        wait_for(finished, LOAD_BOUND + 60, "the load %s to finish" % load.prefix, interval=0.25)
        load.stop()
        codes = {}
        for a in load.attempts:
            codes[a.code] = codes.get(a.code, 0) + 1
        cluster_log("load %s: %d answered, replies %s" % (load.prefix, len(load.attempts), codes))
        self.assertEqual(load.select(lambda a: a.permfail), [], "5xx under load")
        return load

    # --- logs and status ------------------------------------------------------

    def matches(self, regex, nodes=None):
        """matches - (node id, unix time, groups...) of regex in the nodes' logs since setUp."""
        out = []
        for n in nodes or self.cluster.nodes:
            for m in regex.finditer(log_since(n, self.marks)):
                out.append((n.id, log_time(m.group(1))) + m.groups()[1:])
        return out

    def sent_by_node(self, qids):
        """sent_by_node - {node id: number of "status=sent" lines for the queue ids qids}."""
        out = {n.id: 0 for n in self.cluster.nodes}
        for node_id, _, qid, _ in self.matches(SENT_RE):
            if qid in qids:
                out[node_id] += 1
        return out

    def wait_running(self, candidates, least=1, timeout=RUNNING_BOUND):
        """wait_running - until one of candidates reports at least `least` deliveries running
        (hamrctl status deliveries_running); returns (node, its status)."""
        def running():
            self.env.check_nodes_alive()
            for n in candidates:
                s = self.cluster.status(n)
                if s is not None and int(field(s, "deliveries_running", 0) or 0) >= least:
                    return n, s
            return None

        return wait_for(running, timeout, "a follower with %d deliveries running" % least,
                        interval=0.05)

    def why_not_spread(self):
        """why_not_spread - for a failure message: the leader's "deliverers:" lines and each
        node's log lines since setUp on whom the leader gives deliveries (behind in the
        log, caught up, a next hop suspended or probed, a restart)."""
        c = self.cluster
        out = []
        leader = c.agreed_leader()
        if leader is not None:
            text = self.status_text(leader)
            out.append("%s (leader) status:\n%s" % (leader.name, "\n".join(
                l for l in text.splitlines() if DELIVERER_RE.match(l))))
        for n in c.nodes:
            lines = [l for l in log_since(n, self.marks).splitlines() if SPREAD_NOTE_RE.search(l)]
            out.append("%s: %d such log lines%s" % (n.name, len(lines), "".join(
                "\n  " + l for l in lines[-12:])))
        return "\n".join(out)

    # --- the oracle -------------------------------------------------------------

    def spread_oracle(self, name, loads, timeout=DRAIN_BOUND):
        """spread_oracle - every queue empty and every digest equal, then the oracle: nothing
        lost, unexpected or corrupted; a duplicate only for a queue id some node logged a
        "lease ran out ... possible duplicate" line for. Returns (OracleResult, the queue
        ids of those lines)."""
        c = self.cluster
        statuses = c.wait_converged(timeout)
        attempts = [a for load in loads for a in load.attempts]
        res = cluster.oracle_check(attempts, self.records(), [load.prefix for load in loads])
        lapsed = {m[2] for m in self.matches(LAPSE_RE)}
        digests = {i: (field(s, "queue_digest") or "")[:12] for i, s in statuses.items()}
        cluster_log("oracle %s: %s lease lapses logged=%d digests=%s"
                    % (name, res.summary(), len(lapsed), digests))
        sys.stderr.write("%s: %s\n" % (name, res.summary()))
        self.assertEqual(res.lost, [], "acknowledged but never delivered: %s"
                         % [res.details.get(t) for t in res.lost[:10]])
        self.assertEqual(res.unexpected, [], "delivered but never acknowledged nor in doubt: %s"
                         % [res.details.get(t) for t in res.unexpected[:10]])
        self.assertEqual(res.corrupted, [], "delivered with a different body")
        by_tid = {a.test_id: a for a in attempts}
        unexplained = {t: n for t, n in res.duplicates.items()
                       if by_tid[t].queue_id not in lapsed}
        self.assertEqual(unexplained, {}, "duplicates without a \"lease ran out ... possible "
                         "duplicate\" line for their queue id: %s"
                         % {t: by_tid[t].queue_id for t in list(unexplained)[:10]})
        self.assertGreater(res.ok, 0, "the load got no 250 at all")
        return res, lapsed

    def qid_map(self, loads):
        """qid_map - {queue id: test id} of the loads' acknowledged messages."""
        return {a.queue_id: a.test_id for load in loads for a in load.attempts
                if a.ok and a.queue_id}


class ClusterSpreadTest(SpreadTestCase):
    def test_a_spread(self):
        c = self.cluster
        leader = c.wait_leader()
        load = self.run_load("sp-a", SPREAD_MESSAGES, threads=6, pace=0.02)
        res, lapsed = self.spread_oracle("spread", [load])
        self.assertEqual(res.dup, 0, "duplicates without a fault: %s" % res.duplicates)
        self.assertEqual(lapsed, set(), "a lease ran out without a fault")
        qids = set(self.qid_map([load]))
        sent = self.sent_by_node(qids)
        cluster_log("spread: deliveries of the load by node %s (of %d acknowledged)"
                    % (sent, len(qids)))
        for n in c.nodes:
            self.assertGreater(sent[n.id], 0, "%s delivered none of the load" % n.name)
        self.assertEqual(sum(sent.values()), len(qids), "a delivery logged twice or not at all")
        self.assertIs(c.wait_leader(), leader, "the leader changed")
        text = self.status_text(leader)
        lines = [ln for ln in text.splitlines() if DELIVERER_RE.match(ln)]
        cluster_log("spread: the leader's deliverers:\n  %s" % "\n  ".join(lines))
        self.assertEqual(len(lines), 3, "deliverers: lines of %s:\n%s" % (leader.name, text))
        self.assertTrue(lines[0].startswith("deliverers:"), text)
        rows = {int(m.group(1)): m for m in DELIVERER_RE.finditer("\n".join(lines))}
        self.assertEqual(set(rows), {n.id for n in c.nodes})
        for i, m in rows.items():
            self.assertGreater(int(m.group(4)), 0, "node %d: nothing leased: %s" % (i, m.group(0)))
            self.assertLess(float(m.group(5)), 3.5, "node %d not heard from: %s" % (i, m.group(0)))
        sys.stderr.write("spread: %d messages, delivered by node %s\n" % (len(qids), sent))

    def test_b_kill_delivering_follower(self):
        c = self.cluster
        leader = c.wait_leader()
        self.use_sink(data_start_delay=SLOW_START, data_delay=SLOW_DOT)
        followers = [n for n in c.nodes if n is not leader]
        load = self.run_load("sp-b", 90, threads=4, pace=0.05, wait=False)
        load.wait_ok(10, 30)
        # The first final dots are in: deliveries wait for the reply to theirs (SLOW_DOT),
        # so the kill falls into the duplicate window of some.
        prefix = load.prefix + "-"
        wait_for(lambda: any((r.get("test_id") or "").startswith(prefix) for r in self.records()),
                 30, "the first delivery of the load at the next hop", interval=0.05)
        victim, st = self.wait_running(followers)
        wall_kill = time.time()
        c.kill9(victim)
        cluster_log("%s killed with %s deliveries running" % (victim.name,
                                                             field(st, "deliveries_running")))
        self.finish_load(load)
        survivors = [n for n in c.nodes if n is not victim]

        def taken_over():
            lapses = [m for m in self.matches(LAPSE_RE, survivors) if int(m[5]) == victim.id]
            return lapses

        lapses = wait_for(taken_over, 2 * LEASE + TAKEOVER_SLACK, "the survivors to lease the "
                          "recipients of %s again" % victim.name, interval=0.2)
        c.wait_converged(DRAIN_BOUND)
        lapses = [m for m in self.matches(LAPSE_RE, survivors) if int(m[5]) == victim.id]
        qids = self.qid_map([load])
        taken = {m[2] for m in lapses}
        sent = {}
        for node_id, t, qid, _ in self.matches(SENT_RE, survivors):
            if qid in taken and t >= wall_kill:
                sent[qid] = min(sent.get(qid, t), t)
        late = {q: "%.1fs" % (sent[q] - wall_kill) for q in sent
                if sent[q] - wall_kill > 2 * LEASE + TAKEOVER_SLACK}
        took = max((t - wall_kill for t in sent.values()), default=None)
        cluster_log("kill: %d leases of %s taken over (%s), delivered by the survivors "
                    "at most %s s after the kill" % (len(taken), victim.name, sorted(taken)[:8],
                                                     took and "%.1f" % took))
        self.assertEqual(sorted(taken - set(sent)), [],
                         "taken over but never delivered by a survivor after the kill")
        self.assertEqual(late, {}, "delivered later than 2 * lease_time + %.0fs after the kill"
                         % TAKEOVER_SLACK)
        self.assertTrue(all(q in qids for q in taken), "a lapse of a message not of the load")
        c.restart(victim)
        c.wait_caught_up(victim, 60)
        res, lapsed = self.spread_oracle("spread-kill-follower", [load])
        by_tid = {a.test_id: a for a in load.attempts}
        dup_qids = {by_tid[t].queue_id for t in res.duplicates}
        self.assertEqual(sorted(dup_qids - taken), [], "duplicates of messages whose lease "
                         "%s did not hold" % victim.name)
        self.assertIs(c.wait_leader(), leader, "the leader changed")
        sys.stderr.write("spread-kill-follower: %d leases taken over, last delivered %.1fs after "
                         "the kill (bound %.0fs), dup=%d\n"
                         % (len(taken), took or 0.0, 2 * LEASE + TAKEOVER_SLACK, res.dup))


class ClusterSpreadNetTest(SpreadTestCase, cluster.NetLabTestCase):
    """ClusterSpreadNetTest - the cluster in network namespaces (cluster.NetLab), with
    [delivery] max_per_destination PER_DEST: the whole cluster has at most PER_DEST
    connections to the next hop (relay_spread.c), each taking its holder's deliveries one
    after the other, so that the deliveries after the first wave start well after their
    messages were accepted (their bodies in the store);
    and retry_min RETRY: a node suspends a next hop it cannot reach for retry_min (at
    most 10 s) before it reports it as probing, so the leader's status shows the
    suspension for that long."""

    DELIVERY = {"lease_time": "%ds" % LEASE, "max_per_destination": str(PER_DEST),
                "retry_min": RETRY, "retry_max": RETRY}

    def test_a_partition_delivering_follower(self):
        """Cut off in the second wave of deliveries: bodies streamed from the store."""
        self.partition_delivering_follower("sp-p", fresh=False)

    def test_c_partition_fresh_bodies(self):
        """Cut off in the first wave: the messages had just been accepted (their bodies still
        in memory when leased)."""
        self.partition_delivering_follower("sp-f", fresh=True)

    def partition_delivering_follower(self, name, fresh):
        """partition_delivering_follower - the slow next hop and PARTITION_MESSAGES messages;
        fresh: a follower is cut off as soon as it has two deliveries running (the first
        wave: leased the moment they were accepted); else once the first wave of
        deliveries has reached the next hop (the next ones were queued for a while). The
        follower must end every delivery (deliveries_running 0) and none of its final dots
        may reach the sink after it logged "lease running out" for that message; the
        majority delivers its recipients; healed, the oracle."""
        c = self.cluster
        lab = self.lab
        leader = c.wait_leader()
        self.use_sink(data_start_delay=SLOW_START_PAST_LEASE, data_delay=SLOW_DOT)
        followers = [n for n in c.nodes if n is not leader]
        load = self.run_load(name, PARTITION_MESSAGES, threads=4, pace=0.05, wait=False)
        load.wait_ok(10, 30)
        least = 2
        if not fresh:
            # The first wave's final dots are in and answered: what runs now is the next
            # wave, waiting for its 354 (SLOW_START_PAST_LEASE) with bodies from the store.
            prefix = load.prefix + "-"
            times = wait_for(lambda: [r["time"] for r in self.records() if (
                r.get("test_id") or "").startswith(prefix)][FIRST_WAVE - 1:],
                60, "the first wave of deliveries at the next hop", interval=0.1)
            cluster.pause(max(times[0] + SLOW_DOT + 0.5 - time.time(), 0.0))
            least = 1
        victim, st = self.wait_running(followers, least=least)
        others = [n for n in c.nodes if n is not victim]
        wall_part = time.time()
        lab.isolate(victim.id, [n.id for n in others])
        cluster_log("partition: %s cut off from its peers with %s deliveries running"
                    % (victim.name, field(st, "deliveries_running")))

        def ended():
            s = c.status(victim)
            if s is None or int(field(s, "deliveries_running", 0) or 0) != 0:
                return None
            return s

        st = wait_for(ended, LEASE + SLOW_START_PAST_LEASE + SLOW_DOT + 10,
                      "%s to end its deliveries (its leases ran out)" % victim.name,
                      interval=0.2)
        t_ended = time.time() - wall_part
        stopped = self.matches(STOPPED_RE, [victim])
        cluster_log("partition: %s has no delivery running %.1fs after the cut; stopped %s "
                    "(status %s): %s" % (victim.name, t_ended, len(stopped),
                                         field(st, "deliveries_stopped"),
                                         [m[2] for m in stopped][:8]))

        def taken_over():
            return [m for m in self.matches(LAPSE_RE, others) if int(m[5]) == victim.id]

        wait_for(taken_over, 2 * LEASE + TAKEOVER_SLACK,
                 "the majority to lease the recipients of %s again" % victim.name, interval=0.2)
        self.finish_load(load)

        def majority_delivered():
            taken = {m[2] for m in taken_over()}
            done = {qid for _, t, qid, _ in self.matches(SENT_RE, others) if t >= wall_part}
            return taken <= done

        wait_for(majority_delivered, DRAIN_BOUND, "the majority to deliver the recipients of %s"
                 % victim.name, interval=0.25)
        taken = {m[2] for m in taken_over()}
        lab.heal()
        cluster_log("partition: healed; %d leases of %s taken over" % (len(taken), victim.name))
        # No final dot of the cut-off node reached the next hop after it logged that the
        # lease of that message was running out.
        qids = self.qid_map([load])
        running_out = {}
        for _, t, qid, _lease in self.matches(RUNNING_OUT_RE, [victim]):
            running_out[qid] = min(running_out.get(qid, t), t)
        addr = lab.node_addr(victim.id)
        late_dots = []
        for r in self.records():
            tid = r.get("test_id")
            for qid, t in running_out.items():
                if qids.get(qid) == tid and r.get("peer") == addr and \
                        float(r["time"]) > t + DOT_EPSILON:
                    late_dots.append((qid, tid, "dot %.2fs after" % (float(r["time"]) - t)))
        sent_late = [m[2] for m in self.matches(SENT_RE, [victim]) if m[2] in running_out]
        res, lapsed = self.spread_oracle("spread-partition-%s" % ("fresh" if fresh else "stored"),
                                         [load])
        cluster_log("partition: %d deliveries of %s ran out of lease, %d stopped, %d sent "
                    "anyway, %d of them with the final dot after \"lease running out\": %s"
                    % (len(running_out), victim.name, len(stopped), len(sent_late),
                       len(late_dots), late_dots[:5]))
        self.assertEqual(late_dots, [], "final dots of %s after it logged \"lease running out"
                         "... action=stopping before the final dot\" for the message"
                         % victim.name)
        if not fresh:
            self.assertGreaterEqual(len(stopped), 1, "no \"delivery stopped\" line")
        sys.stderr.write("spread-partition-%s: %d ran out of lease, %d stopped, all ended %.1fs "
                         "after the cut, %d leases taken over, dup=%d\n"
                         % ("fresh" if fresh else "stored", len(running_out), len(stopped),
                            t_ended, len(taken), res.dup))

    def test_b_egress_blocked(self):
        """The blocked node suspends the next hop, the others drain the backlog; healed, a
        second load is delivered (the blocked node's share printed)."""
        self.egress_blocked("sp-e", resume=False)

    def test_d_egress_healed_resumes(self):
        """As b; after the heal the blocked node delivers to the next hop again."""
        self.egress_blocked("sp-r", resume=True)

    def test_e_clock_unknown(self):
        """A follower that knows the leader but not the cluster time: 451 at MAIL, then 250
        once a report of its is answered."""
        c = self.cluster
        lab = self.lab
        leader = c.wait_leader()
        victim = next(n for n in c.nodes if n is not leader)
        others = [n for n in c.nodes if n is not victim]
        c.stop(victim)
        # Restarted, it knows nothing of the cluster time; its reports to the leader's peer
        # port are refused, raft is not.
        lab.refuse_ports(victim.id, [n.id for n in others], [n.peer_port for n in others])
        c.restart(victim)

        def follows():
            self.env.check_nodes_alive()
            s = c.status(victim)
            if s is None or int(field(s, "leader_id", 0) or 0) in (0, victim.id):
                return None
            return s if int(field(s, "cluster_level", 0) or 0) >= 6 else None

        # Any other leader will do (a leader knows the time: it stamps it).
        st = wait_for(follows, RESTART_BOUND, "%s to follow a leader at level 6 again"
                      % victim.name, interval=0.1)
        leader = c.node(int(field(st, "leader_id")))
        self.assertFalse(field(st, "clock_known", False),
                         "%s knows the cluster time with its reports refused" % victim.name)
        code, text = harness.mail_reply(victim.smtp_port, host=victim.host)
        cluster_log("clock unknown: %s follows %s; MAIL FROM: %s %s"
                    % (victim.name, leader.name, code, text))
        self.assertEqual(text, TRY_AGAIN, "MAIL FROM on a node without the cluster time")
        code, body = c.health(victim)
        self.assertEqual((code, body), (503, "not ready: cluster time not known yet"))
        st = c.status(victim)
        self.assertIsNotNone(st)
        self.assertEqual(int(field(st, "leader_id", 0) or 0), leader.id, "no leader, or another")
        self.assertFalse(field(st, "clock_known", False))

        lab.heal()
        t_heal = time.monotonic()

        def takes_mail():
            self.env.check_nodes_alive()
            return harness.mail_reply(victim.smtp_port, host=victim.host)[0] == 250

        wait_for(takes_mail, CLOCK_BOUND, "%s to take mail once its reports are answered"
                 % victim.name, interval=0.2)
        took = time.monotonic() - t_heal
        st = c.status(victim)
        self.assertTrue(field(st, "clock_known", False), "250 at MAIL, but clock_known false")
        load = self.run_load("sp-t", CLOCK_MESSAGES, threads=2, pace=0.05,
                             targets=lambda: [victim])
        self.assertEqual(len(load.ok()), CLOCK_MESSAGES, "replies %s" % [
            (a.code, a.text) for a in load.attempts if not a.ok][:5])
        res, lapsed = self.spread_oracle("spread-clock-unknown", [load])
        self.assertEqual(res.dup, 0, "duplicates without a fault: %s" % res.duplicates)
        sys.stderr.write("spread-clock-unknown: 451 while %s knew the leader but not the time; "
                         "250 %.1fs after the heal (bound %.0fs)\n" % (victim.name, took,
                                                                      CLOCK_BOUND))

    def egress_blocked(self, name, resume):
        """egress_blocked - a follower's connections to the next hop refused under a load of
        300 (see the module docstring); healed, a second load of about 20 s; resume: the
        follower must deliver some of it."""
        c = self.cluster
        lab = self.lab
        leader = c.wait_leader()
        sink = self.use_sink()
        victim = next(n for n in c.nodes if n is not leader)
        dest = "[%s]:%d" % (lab.hub_addr, sink.port)
        lab.block_hub_port(victim.id, sink.port, "reset")
        wall_block = time.time()
        cluster_log("%s: connections to the next hop %s refused" % (victim.name, dest))
        load = self.run_load(name, 300, threads=6, pace=0.02, wait=False)

        def suspended():
            for _, t, d in self.matches(SUSPENDED_RE, [victim]):
                if d == dest:
                    return t
            return None

        t_susp = wait_for(suspended, SUSPEND_BOUND, "%s to suspend %s" % (victim.name, dest),
                          interval=0.2)
        cluster_log("%s suspended %s %.1fs after the block" % (victim.name, dest,
                                                              t_susp - wall_block))

        def leader_knows():
            s = c.status(c.wait_leader())
            for dm in field(s, "delivery_members", []) or []:
                if int(field(dm, "id", 0)) == victim.id and int(field(dm, "suspended", 0) or 0):
                    return dm
            return None

        dm = wait_for(leader_knows, SUSPEND_SETTLE + 5, "the leader to list %s with a next hop "
                      "suspended" % victim.name, interval=0.2)
        self.finish_load(load)
        t_end = time.monotonic()
        res, lapsed = self.spread_oracle("spread-egress-blocked", [load], timeout=DRAIN_BOUND)
        drained = time.monotonic() - t_end
        self.assertEqual(res.dup, 0, "duplicates: %s" % res.duplicates)
        tried = self.matches(TRIED_RE, [victim])
        after = [m for m in tried if m[1] > t_susp + SUSPEND_SETTLE]
        sent = self.sent_by_node(set(self.qid_map([load])))
        cluster_log("egress: %s tried %d deliveries (%d after its suspension settled: %s), "
                    "sent %d; by node %s; drained %.1fs after the load; leader's entry %s"
                    % (victim.name, len(tried), len(after), sorted({m[4] for m in after}),
                       sent[victim.id], sent, drained, dm))
        self.assertEqual(sent[victim.id], 0, "%s delivered through a blocked egress"
                         % victim.name)
        self.assertLessEqual(len(after), PROBES_AFTER_SUSPEND,
                             "%s still got deliveries to %s after suspending it: %s"
                             % (victim.name, dest, after[:5]))
        # Healed: a second load, long enough for the node's suspension to end (RETRY) and
        # for a probe; with resume the node must deliver again (a probe that gets a session
        # lifts the suspension, relay_sched.c).
        lab.heal()
        wall_heal = time.time()
        self.marks = c.log_marks()
        load2 = self.run_load(name + "2", HEALED_MESSAGES, threads=4, pace=0.3)
        res2, _ = self.spread_oracle("spread-egress-healed", [load, load2])
        self.assertEqual(res2.dup, 0, "duplicates: %s" % res2.duplicates)
        sent2 = self.sent_by_node(set(self.qid_map([load2])))
        first = min((t for _, t, qid, _ in self.matches(SENT_RE, [victim])), default=None)
        cluster_log("egress healed: second load (%.1fs) delivered by node %s; %s's first "
                    "delivery %s after the heal" % (max(a.t_end for a in load2.attempts)
                                                     - load2.t_begin, sent2, victim.name,
                                                     first and "%.1fs" % (first - wall_heal)))
        sys.stderr.write("spread-egress: suspended %.1fs after the block, %d tries after "
                         "it settled, drained %.1fs after the load; healed: by node %s\n"
                         % (t_susp - wall_block, len(after), drained, sent2))
        if resume:
            self.assertGreater(sent2[victim.id], 0, "%s never delivered again after the heal; "
                               "%s" % (victim.name, self.why_not_spread()))


class ClusterSpreadNoSlotsTest(SpreadTestCase):
    """ClusterSpreadNoSlotsTest - node NO_SLOTS_NODE runs no delivery ([delivery]
    delivery_slots = 0): the leader leases nothing to it, whichever node leads."""

    @classmethod
    def make_cluster(cls):
        c = super().make_cluster()
        node = c.node(NO_SLOTS_NODE)
        node.overrides = {s: dict(kv) for s, kv in node.overrides.items()}
        node.overrides.setdefault("delivery", {})["delivery_slots"] = "0"
        node.write_config()
        return c

    def test_a_no_slots(self):
        c = self.cluster
        idle = c.node(NO_SLOTS_NODE)
        leader = c.wait_leader()
        before = {n.id: n.counters("hamr_deliveries_total", label="outcome") for n in c.nodes}
        load = self.run_load("sp-z", NO_SLOTS_MESSAGES, threads=4, pace=0.02)
        taken = [a for a in load.ok() if a.node == idle.id]
        self.assertGreater(len(taken), 0, "%s answered none of the load with 250" % idle.name)
        res, lapsed = self.spread_oracle("spread-no-slots", [load])
        self.assertEqual(res.dup, 0, "duplicates without a fault: %s" % res.duplicates)
        self.assertEqual(lapsed, set(), "a lease ran out without a fault")
        qids = set(self.qid_map([load]))
        sent = self.sent_by_node(qids)
        after = {n.id: n.counters("hamr_deliveries_total", label="outcome") for n in c.nodes}
        delta = {i: sum(after[i].values()) - sum(before[i].values()) for i in after}
        cluster_log("no slots: %s took %d of %d acknowledged; deliveries by node %s, "
                    "hamr_deliveries_total grew by %s" % (idle.name, len(taken), len(qids),
                                                          sent, delta))
        self.assertEqual(sent[idle.id], 0, "%s delivered with delivery_slots = 0" % idle.name)
        self.assertEqual(delta[idle.id], 0, "%s recorded delivery outcomes" % idle.name)
        for n in c.nodes:
            if n is not idle:
                self.assertGreater(sent[n.id], 0, "%s delivered none of the load" % n.name)
        self.assertEqual(sum(sent.values()), len(qids), "a delivery logged twice or not at all")
        self.assertIs(c.wait_leader(), leader, "the leader changed")
        text = self.status_text(leader)
        rows = {int(m.group(1)): m for m in DELIVERER_RE.finditer(text)}
        self.assertIn(idle.id, rows, "no deliverers: line for %s:\n%s" % (idle.name, text))
        row = rows[idle.id]
        self.assertEqual((int(row.group(2)), int(row.group(3)), int(row.group(4))), (0, 0, 0),
                         "running, slots, leased of %s: %s" % (idle.name, row.group(0)))
        sys.stderr.write("spread-no-slots: %s took %d messages and delivered none; the others "
                         "delivered %s\n" % (idle.name, len(taken), sent))


class ClusterSpreadConnsTest(SpreadTestCase):
    """ClusterSpreadConnsTest - [delivery] max_per_destination CONNS_PER_DEST holds for the
    connections of the whole cluster, not of each node (relay_spread.c, smtpc group cap)."""

    DELIVERY = {"lease_time": "%ds" % LEASE, "max_per_destination": str(CONNS_PER_DEST)}

    def test_a_conns_limit(self):
        sink = self.use_sink(data_start_delay=0.2, data_delay=0.2)
        load = self.run_load("sp-n", CONNS_MESSAGES, threads=6, pace=0.02)
        res, lapsed = self.spread_oracle("spread-conns", [load])
        self.assertEqual(res.dup, 0, "duplicates without a fault: %s" % res.duplicates)
        sent = self.sent_by_node(set(self.qid_map([load])))
        peak = max([int(m.group(1)) for m in SESSIONS_RE.finditer(sink.proc.log_text())] or [0])
        cluster_log("conns: the next hop had at most %d sessions at once; deliveries by node %s"
                    % (peak, sent))
        self.assertLessEqual(peak, CONNS_PER_DEST, "more connections at once than "
                             "max_per_destination for the whole cluster")
        self.assertEqual(peak, CONNS_PER_DEST, "the load never used every connection allowed")
        self.assertGreater(sum(1 for v in sent.values() if v > 0), 1, "one node delivered all: "
                           "%s" % self.why_not_spread())
        sys.stderr.write("spread-conns: at most %d sessions at once (max_per_destination %d); "
                         "delivered by node %s\n" % (peak, CONNS_PER_DEST, sent))


class ClusterSpreadRateTest(SpreadTestCase):
    """ClusterSpreadRateTest - [delivery] rate_per_destination RATE_PER_MINUTE holds for the
    whole cluster, not for each node (relay_rate.c on the leader)."""

    DELIVERY = {"lease_time": "%ds" % LEASE, "rate_per_destination": str(RATE_PER_MINUTE)}

    def test_a_rate_limit(self):
        # Slow, so that deliveries overlap: a node's share of a connection fills and the
        # leader leases to another (a fast next hop would see one node deliver them all).
        self.use_sink(data_start_delay=1.0, data_delay=2.0)
        load = self.run_load("sp-r", RATE_MESSAGES, threads=6, pace=0.02)
        res, lapsed = self.spread_oracle("spread-rate", [load])
        self.assertEqual(res.dup, 0, "duplicates without a fault: %s" % res.duplicates)
        prefix = load.prefix + "-"
        times = sorted(float(r["time"]) for r in self.records()
                       if (r.get("test_id") or "").startswith(prefix))
        self.assertEqual(len(times), RATE_MESSAGES)
        per_s = RATE_PER_MINUTE / 60.0
        burst = max(1, RATE_PER_MINUTE // 60)
        worst = None
        for i in range(len(times)):
            for j in range(i, len(times)):
                allowed = burst + per_s * (times[j] - times[i] + RATE_JITTER)
                if j - i + 1 > allowed and worst is None:
                    worst = (j - i + 1, times[j] - times[i], allowed)
        span = times[-1] - times[0]
        sent = self.sent_by_node(set(self.qid_map([load])))
        answered = max(a.t_end for a in load.attempts) - load.t_begin
        cluster_log("rate: %d messages answered in %.1fs, delivered over %.1fs; by node %s"
                    % (RATE_MESSAGES, answered, span, sent))
        self.assertIsNone(worst, "%s messages within %s s, more than the rate allows (%s)"
                          % worst if worst else "")
        self.assertGreaterEqual(span, (RATE_MESSAGES - burst) / per_s - RATE_JITTER,
                                "delivered faster than rate_per_destination")
        self.assertGreater(sum(1 for v in sent.values() if v > 0), 1, "one node delivered all")
        sys.stderr.write("spread-rate: %d messages answered in %.1fs, delivered over %.1fs at "
                         "%d a minute; by node %s\n" % (RATE_MESSAGES, answered, span,
                                                       RATE_PER_MINUTE, sent))


if __name__ == "__main__":
    unittest.main(verbosity=2)
