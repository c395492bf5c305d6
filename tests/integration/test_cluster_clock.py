#!/usr/bin/python3
"""test_cluster_clock.py - SECURITY.md F11: wall clocks stepped under load, one node at a time.

Every hamrd of the cluster runs under libfaketime (Debian's faketime package,
LD_PRELOAD of libfaketimeMT), with FAKETIME_DONT_FAKE_MONOTONIC=1 so that only
the wall clock moves: CLOCK_MONOTONIC (libuv's uv_now, raft's timers, the
lease ends a holder counts) stays true, as it does when an administrator or
an NTP client steps a real clock. Each node's offset is read from its own
FAKETIME_TIMESTAMP_FILE ("+0" at the start); the test steps a node's clock
while it runs by rewriting that file. The file is read again at most once a
second (FAKETIME_CACHE_DURATION=1): the step is a real jump of a running
process, in either direction, which a restart with an offset would not be
(a restarted leader is no longer the leader; that the clock also holds
across a restart is a smaller case). FAKETIME_NO_CACHE=1 would read the file
on every clock call of every thread, for nothing the test needs.

The cluster has a short [delivery] queue_lifetime (30 minutes), so that a
time stamped from one node's wall clock, one hour off, would show: a
message accepted by a node an hour behind would expire at once, one
accepted by a node an hour ahead would be kept an hour too long, and a
holder an hour ahead would expire whatever it failed to deliver. The sink
answers every DATA (354) after SINK_DELAY seconds (a slow next hop: deliveries and
their leases are live when a clock jumps) and tempfails the recipients
"defer-*" until the end of the case, so that a few messages sent by the test
stay queued, tried again and again by every holder: the queue shows their
stamped times (hamrctl queue: received_at, expires_at), and every retry
passes the holder's expiry check.

  a  a follower's clock +1 h, then the other follower's -1 h, under load.
  b  the leader's clock +1 h, then -1 h (two hours back), under load.
  c  a follower's clock +1 h, then leadership moved to it (hamrctl transfer).

In each case, for every node: hamrctl status (its "clock:" line and the JSON
clock_skew_ms / clock_skewed), /metrics (hamr_clock_skew_seconds,
hamr_clock_skewed) and /health/ready (200, "ready; clock skew: ...") report
the skew of the stepped nodes and of no other: the cluster time did not
follow a stepped clock, the leader's included (the nodes whose clock is
right report no skew). Mail is taken through the stepped node after the
step. The deferred messages carry times stamped in the cluster time (their
arrival within a few seconds of the test's clock, their expiry
queue_lifetime later) whichever node accepted them. Once the sink takes
them, the oracle of SECURITY.md section 1 (cluster.oracle_run): nothing
lost, nothing duplicated (no leader-changing event in a and b; the transfer
in c); every deferred message delivered exactly once; no recipient expired
(hamr_deliveries_total{outcome="expired"}, "expired id=" in the logs), no
notice of failure at the sink, no lease taken over ("lease ran out" lines,
hamr_lease_lapses_total), and no election caused by a jump (a, b: no new
term; c: only the transfer's).

The test PKI (harness.pki_dir) is made under libfaketime a day back: certificates made
the moment the test starts are not yet valid on a node whose clock is an hour behind
(OpenSSL: "certificate verify failed" on its control, raft and peer ports, the first run of
case a showed it on the control port), which is X.509's rule, not the cluster time's; a real
cluster's certificates are older than the steps made here.

Skips when libfaketime is not installed (apt-get install faketime).
"""

import glob
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from cluster import LEASE_TIME, cluster_log  # noqa: E402
from harness import field, make_message, new_test_id, wait_for  # noqa: E402

FAKETIME_LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
STEP = 3600  # seconds: the jump of a wall clock
QUEUE_LIFETIME = 1800  # seconds: [delivery] queue_lifetime of this cluster
MAX_CLOCK_SKEW = 5.0  # seconds: [node] max_clock_skew (hamr's default)
SINK_DELAY = 0.5  # seconds the sink waits before it answers DATA with 354
SKEW_TOLERANCE = 2.5  # seconds: a follower's estimate, the 1 s cache of the offset
STAMP_TOLERANCE = 5.0  # seconds between the test's clock and a stamped arrival
PKI_BACKDATE = 86400  # seconds: the test PKI is made valid from a day back
REPORT_BOUND = 20.0  # seconds for every node to report a step
DEFER_PREFIX = "defer-"  # the sink tempfails these recipients until the end of a case
DEFER_SENDER = "clock@example.org"
DEFER_ATTEMPTS = 2  # tries of each deferred message before the case goes on
SKEW_LINE = re.compile(r"(?m)^clock:\s+([+-]\d+\.\d+) s from the cluster time( \(skewed: past "
                       r"\[node\] max_clock_skew\))?$")
READY_SKEW = re.compile(r"^ready; clock skew: ([+-]\d+\.\d) s from the cluster time "
                        r"\(limit (\d+\.\d) s\)$")


def metric(text, name):
    """metric - the value of the unlabelled sample name in a /metrics text (None if absent)."""
    m = re.search(r"(?m)^%s (\S+)$" % re.escape(name), text)
    return float(m.group(1)) if m else None


class ClusterClockTest(cluster.ClusterTestCase):
    @classmethod
    def setUpClass(cls):
        if not FAKETIME_LIBS:
            raise unittest.SkipTest("libfaketime is not installed (apt-get install faketime)")
        if harness._PKI["dir"] is None:
            harness.PKI_ENV = {"LD_PRELOAD": FAKETIME_LIBS[0], "FAKETIME": "-%d" % PKI_BACKDATE}
        super().setUpClass()

    @classmethod
    def make_cluster(cls):
        c = cluster.Cluster(cls.env, 3,
                            overrides={"delivery": {"queue_lifetime": "%ds" % QUEUE_LIFETIME}})
        c.add_http()
        # Before the 354, not after the final dot: the case restarts the sink, and a sink
        # stopped between storing a message and its 250 would make a duplicate of it.
        c.sink.options += ["--data-start-delay", str(SINK_DELAY)]
        cls.defer_options = ["--tempfail-rcpt", "^" + DEFER_PREFIX]
        c.sink.options += cls.defer_options
        # The sanitizers' runtime must come first among the libraries unless told
        # not to check: libfaketime is preloaded before it.
        asan = os.environ.get("ASAN_OPTIONS", "")
        for node in c.nodes:
            node.clock_file = os.path.join(node.home, "faketime.rc")
            cls.write_clock(node, 0)
            node.proc_env = {
                "LD_PRELOAD": FAKETIME_LIBS[0],
                "FAKETIME_TIMESTAMP_FILE": node.clock_file,
                "FAKETIME_CACHE_DURATION": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0",
            }
        return c

    @staticmethod
    def write_clock(node, offset):
        """write_clock - node's wall clock offset (seconds) from now on (read within 1 s)."""
        tmp = node.clock_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%+d\n" % offset)
        os.chmod(tmp, 0o644)  # hamrd reads it after dropping its privileges
        os.rename(tmp, node.clock_file)
        node.clock_offset = offset

    def step(self, node, offset):
        cluster_log("wall clock of %s stepped to %+d s" % (node.name, offset))
        self.write_clock(node, offset)

    def setUp(self):
        """setUp - every clock true, every node running and reporting no skew, the sink
        deferring the "defer-*" recipients."""
        super().setUp()
        for node in self.cluster.nodes:
            self.write_clock(node, 0)
        self.set_sink(defer=True)
        self.revive_all()
        self.wait_reports()
        self.deferred = []  # (test id, rcpt, node id, wall time before send, after)

    # --- the sink ---------------------------------------------------------

    def set_sink(self, defer):
        """set_sink - restart the sink with or without the tempfail of "defer-*" (if it
        differs)."""
        sink = self.cluster.sink
        has = sink.options[-len(self.defer_options):] == self.defer_options
        if has == defer and sink.proc is not None and sink.proc.alive():
            return
        sink.stop()
        if defer:
            sink.options = sink.options + self.defer_options
        else:
            sink.options = sink.options[:-len(self.defer_options)]
        sink.start()
        cluster_log("sink restarted %s the deferral of %s*" % ("with" if defer else "without",
                                                                DEFER_PREFIX))

    # --- what the nodes report ------------------------------------------

    def status_text(self, node):
        """status_text - the text of "hamrctl status" (not JSON) on node."""
        out = subprocess.run([harness.hamrctl_path(), "-s",
                              harness.hostport(node.host, node.control_port), "status"],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=15,
                             env=node.ctl_env())
        return out.stdout.decode(errors="replace") if out.returncode == 0 else ""

    def report(self, node):
        """report - what node says of its clock: status JSON, status text, metrics, ready."""
        s = self.cluster.status(node)
        text = self.status_text(node)
        try:
            metrics = node.metrics()
        except OSError:
            metrics = ""
        code, body = self.cluster.health(node)
        return {
            "known": bool(field(s, "clock_known", False)),
            "skew": int(field(s, "clock_skew_ms", 0) or 0) / 1000.0,
            "skewed": bool(field(s, "clock_skewed", False)),
            "line": SKEW_LINE.search(text),
            "text": [l for l in text.splitlines() if l.startswith("clock:")],
            "m_skew": metric(metrics, "hamr_clock_skew_seconds"),
            "m_skewed": metric(metrics, "hamr_clock_skewed"),
            "ready": (code, body),
        }

    def report_problems(self, node, r):
        """report_problems - how node's report r differs from its clock offset ([] if not)."""
        want = node.clock_offset
        skewed = abs(want) > MAX_CLOCK_SKEW
        bad = []
        if not r["known"]:
            bad.append("cluster time not known")
        if abs(r["skew"] - want) > SKEW_TOLERANCE or r["skewed"] != skewed:
            bad.append("status JSON skew %.3f skewed %s" % (r["skew"], r["skewed"]))
        line = r["line"]
        if (line is None or abs(float(line.group(1)) - want) > SKEW_TOLERANCE
                or bool(line.group(2)) != skewed):
            bad.append("status line %r" % r["text"])
        if (r["m_skew"] is None or abs(r["m_skew"] - want) > SKEW_TOLERANCE
                or r["m_skewed"] != (1.0 if skewed else 0.0)):
            bad.append("metrics skew %s skewed %s" % (r["m_skew"], r["m_skewed"]))
        code, body = r["ready"]
        if code != 200:
            bad.append("/health/ready %s %r" % (code, body))
        elif skewed:
            m = READY_SKEW.match(body)
            if (m is None or abs(float(m.group(1)) - want) > SKEW_TOLERANCE
                    or float(m.group(2)) != MAX_CLOCK_SKEW):
                bad.append("/health/ready %r" % body)
        elif body != "ready":
            bad.append("/health/ready %r" % body)
        return bad

    def wait_reports(self, timeout=REPORT_BOUND):
        """wait_reports - until every node reports its own offset as its skew, and only the
        stepped nodes say skewed (status, metrics, /health/ready)."""
        last = {}

        def agreed():
            self.cluster.env.check_nodes_alive()
            for node in self.cluster.nodes:
                last[node.name] = self.report_problems(node, self.report(node))
            return not any(last.values())

        t0 = time.monotonic()
        try:
            wait_for(agreed, timeout, "every node to report its clock offset", interval=0.5)
        except harness.WaitTimeout as e:
            raise AssertionError("%s: offsets %s; what differs: %s" % (
                e, {n.name: n.clock_offset for n in self.cluster.nodes}, last))
        lines = {n.name: self.report(n)["text"] for n in self.cluster.nodes}
        cluster_log("every node reports its clock after %.1fs: %s"
                    % (time.monotonic() - t0, lines))

    # --- messages kept in the queue ---------------------------------------

    def send_deferred(self, tag):
        """send_deferred - one message to a "defer-*" recipient through each node (kept in the
        queue, tried again and again, until the sink is restarted without the tempfail)."""
        for node in self.cluster.nodes:
            tid = new_test_id("clock-%s-%s" % (tag, node.name))
            rcpt = "%s%s@example.com" % (DEFER_PREFIX, tid.lower())
            msg = make_message(tid, DEFER_SENDER, [rcpt])
            before = time.time()
            res = node.send(DEFER_SENDER, [rcpt], msg)
            after = time.time()
            self.assertEqual(res.code, 250, "%s through %s (clock %+d s): %r"
                             % (tid, node.name, node.clock_offset, res))
            self.deferred.append((tid, rcpt, node.id, before, after))

    def check_stamps(self, tag):
        """check_stamps - the deferred messages of tag are queued on every node with times in
        the cluster time (checked as soon as they are there), then tried DEFER_ATTEMPTS times
        at least, none expired."""
        mine = [d for d in self.deferred if d[0].startswith("clock-%s-" % tag)]
        rows = {}

        def queued(attempts):
            self.cluster.env.check_nodes_alive()
            for node in self.cluster.nodes:
                entries = {}
                for e in node.queue():
                    for r in field(e, "rcpts", []) or []:
                        entries[field(r, "addr")] = (e, r)
                rows[node.name] = entries
                for _, rcpt, _, _, _ in mine:
                    if rcpt not in entries:
                        return False
                    if int(field(entries[rcpt][1], "attempts", 0) or 0) < attempts:
                        return False
            return True

        wait_for(lambda: queued(0), 30, "the deferred messages of %s queued on every node" % tag,
                 interval=0.5)
        for node in self.cluster.nodes:
            for tid, rcpt, via, before, after in mine:
                e, r = rows[node.name][rcpt]
                received = int(field(e, "received_at_ms", 0) or 0) / 1000.0
                expires = int(field(e, "expires_at_ms", 0) or 0) / 1000.0
                what = "%s accepted by node%d (clock %+d s), as %s sees it" % (
                    tid, via, self.cluster.node(via).clock_offset, node.name)
                self.assertGreaterEqual(received, before - STAMP_TOLERANCE,
                                        "%s: arrival stamped %.1f s before it was sent"
                                        % (what, before - received))
                self.assertLessEqual(received, after + STAMP_TOLERANCE,
                                     "%s: arrival stamped %.1f s after it was answered"
                                     % (what, received - after))
                self.assertAlmostEqual(expires - received, QUEUE_LIFETIME, delta=1.0,
                                       msg="%s: expiry %.1f s after arrival" % (
                                           what, expires - received))
        wait_for(lambda: queued(DEFER_ATTEMPTS), 30, "the deferred messages of %s tried %d "
                 "times on every node" % (tag, DEFER_ATTEMPTS), interval=0.5)
        for node in self.cluster.nodes:
            for tid, rcpt, via, _, _ in mine:
                r = rows[node.name][rcpt][1]
                # deferred, or active while a holder tries it again
                self.assertIn(field(r, "state"), ("deferred", "active"),
                              "%s accepted by node%d, as %s sees it: %r"
                              % (tid, via, node.name, r))
        cluster_log("deferred %s: %d messages, arrival and expiry in the cluster time on every "
                    "node, tried %d+ times, none expired" % (tag, len(mine), DEFER_ATTEMPTS))

    # --- the case ---------------------------------------------------------

    def start_load(self, name):
        # At most 4 x 4 messages a second against a next hop taking about 10 / SINK_DELAY:
        # the queue stays short, and deliveries are in flight at every step.
        self.load = cluster.LoadGen(self.cluster, name, threads=4, max_messages=3000,
                                    max_seconds=170, pace=0.25).start()
        self.load.wait_ok(10, 30)
        return self.load

    def run_after_step(self, node, seconds=LEASE_TIME + 2):
        """run_after_step - the load goes on for seconds (more than a lease), and node takes
        mail with its clock stepped."""
        t0 = time.monotonic()
        self.load.wait_ok(5, 30, after=t0, nodes=[node])
        cluster.pause(max(0.0, t0 + seconds - time.monotonic()))

    def finish(self, name, events=(), leader_terms_ok=0):
        """finish - stop the load, let the sink take the deferred messages, run the oracle and
        the checks that nothing expired, lapsed or was elected."""
        load = self.load
        load.stop()
        self.assertEqual(load.select(lambda a: a.permfail), [], "5xx under load")
        self.set_sink(defer=False)
        res = cluster.oracle_run(self, self.cluster, load, name, events=events,
                                 timeout=LEASE_TIME * 3 + 90)
        for tid, rcpt, via, _, _ in self.deferred:
            recs = self.cluster.sink.by_test_id(tid)
            self.assertEqual(len(recs), 1, "deferred %s (accepted by node%d) reached the sink "
                             "%d times" % (tid, via, len(recs)))
        notices = [r for r in self.cluster.sink.records() if not r.get("mail_from")]
        self.assertEqual(notices, [], "notices (null sender) at the sink: %r" % notices[:5])
        expired, lapses, stopped = {}, {}, {}
        for node in self.cluster.nodes:
            text = node.proc.log_text()
            outcomes = node.counters("hamr_deliveries_total", label="outcome")
            metrics = node.metrics()
            expired[node.name] = (outcomes.get("expired", 0),
                                  len(re.findall(r"(?m)\bexpired id=", text)))
            lapses[node.name] = (int(metric(metrics, "hamr_lease_lapses_total") or 0),
                                 re.findall(r"(?m)^.*lease ran out id=.*$", text)[:5])
            stopped[node.name] = int(metric(metrics, "hamr_deliveries_stopped_total") or 0)
        terms = self.cluster.leader_terms(since=self.marks)
        cluster_log("%s: expired (metric, log lines) %s; lease lapses %s; deliveries stopped "
                    "by their holder's lease end %s; leader terms since the first step %s"
                    % (name, expired, lapses, stopped, terms))
        self.assertEqual([n for n, v in expired.items() if v != (0, 0)], [],
                         "recipients expired: %s" % expired)
        self.assertEqual([n for n, v in lapses.items() if v != (0, [])], [],
                         "leases taken over: %s" % lapses)
        self.assertLessEqual(len(terms), leader_terms_ok, "elections after a clock step: %s"
                             % terms)
        sys.stderr.write("%s: deferred=%d expired=0 lapses=0 new_terms=%d dup=%d\n"
                         % (name, len(self.deferred), len(terms), res.dup))
        return res

    def test_a_follower(self):
        leader = self.cluster.wait_leader()
        ahead, behind = [n for n in self.cluster.nodes if n is not leader]
        self.start_load("clock-a")
        self.marks = self.cluster.log_marks()
        self.send_deferred("a0")
        self.step(ahead, +STEP)
        self.wait_reports()
        self.send_deferred("a1")
        self.run_after_step(ahead)
        self.check_stamps("a0")
        self.check_stamps("a1")
        self.step(behind, -STEP)
        self.wait_reports()
        self.send_deferred("a2")
        self.run_after_step(behind)
        self.check_stamps("a2")
        self.assertIs(self.cluster.wait_leader(5), leader, "the leader changed")
        self.finish("clock-follower")

    def test_b_leader(self):
        leader = self.cluster.wait_leader()
        self.start_load("clock-b")
        self.marks = self.cluster.log_marks()
        self.send_deferred("b0")
        self.step(leader, +STEP)
        self.wait_reports()
        self.send_deferred("b1")
        self.run_after_step(leader)
        self.check_stamps("b0")
        self.check_stamps("b1")
        self.step(leader, -STEP)  # two hours back
        self.wait_reports()
        self.send_deferred("b2")
        self.run_after_step(leader)
        self.check_stamps("b2")
        self.assertIs(self.cluster.wait_leader(5), leader, "the leader changed")
        self.finish("clock-leader")

    def test_c_new_leader_ahead(self):
        leader = self.cluster.wait_leader()
        ahead = next(n for n in self.cluster.nodes if n is not leader)
        self.start_load("clock-c")
        self.marks = self.cluster.log_marks()
        self.send_deferred("c0")
        self.step(ahead, +STEP)
        self.wait_reports()
        t_transfer = time.time()
        self.assertIs(self.cluster.transfer(ahead), ahead)
        cluster_log("leadership moved to %s (clock %+d s)" % (ahead.name, ahead.clock_offset))
        self.wait_reports()
        self.send_deferred("c1")
        self.run_after_step(ahead)
        self.check_stamps("c0")
        self.check_stamps("c1")
        self.assertIs(self.cluster.wait_leader(5), ahead, "the leader changed again")
        self.finish("clock-new-leader", events=[t_transfer], leader_terms_ok=1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
