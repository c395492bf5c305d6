#!/usr/bin/python3
"""test_hamrctl.py - hamrctl, the real binary, against a real 3-node hamr cluster.

Covers the queue administration verbs (Raft-committed, so every node must
agree afterwards), leadership and membership verbs, drain, and bad input.
Every case checks hamrctl's exit status, its stdout/stderr text and the
cluster's real state (queues of every node, what the sink received, status).

The cluster retries deferred mail after 1 h (retry_min = retry_max = 1h), so
a message whose first attempt failed stays queued until an operator acts.
Mail is kept queued by stopping the sink (connection refused; the leader
then suspends the next hop and tries one message every 10 s) or, where every
message must be tried, by a sink on the same port that answers 451 to every
recipient; it is let through by starting the sink again on the same port. Every node serves
[listen] http so that drain can be checked against /health/ready.

  a  queue on every node lists the same messages; --json parses; filters
     --state, --to, --older-than; bad filter values exit 2 with the reason
  b  show ID on a follower: envelope, recipients, attempts, last error, the
     last attempt's TLS policy and TLS (the same on every node), headers;
     unknown id exits 1, malformed id exits 2
  c  hold (sent to a follower) survives a flush and a live sink; release
     delivers exactly once
  d  delete: gone from every node, never delivered, no DSN
  e  flush: a message deferred for 1 h is delivered at once
  f  bounce: exactly one DSN to the sender, nothing to the recipients
  g  transfer N through a follower (hamrctl follows the redirect); bad ids
  h  add/promote/remove bad input leaves the membership alone
  i  a 4th node started with join = yes (zone dc3, given to add as --zone)
     is added (4 voters, takes mail) and removed again (3 voters)
  j  drain/undrain (also sent to another node with the ID): 421 4.3.2 to new
     sessions, /health/ready 503, status
  k  unreachable node, unknown verb, -s naming a missing socket, -a not HOST:PORT,
     --json before and after the verb
  l  25 queued messages paged with --limit 10 on a follower: 3 pages (10, 10,
     5), every id once and in the order they were accepted; the text names
     the next page's command, JSON its next_after; status counts them
  m  zones ([node] zone dc1, dc1, dc2): status shows each member's zone, this
     node's, and the voters per zone with the majority warning; add --zone dc1
     (dc1 would hold 3 of 4 voters) is refused and leaves the membership alone

Security: hamrctl output and node replies are untrusted text; they are only
compared and printed with repr().
"""

import copy
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from harness import field, make_message, new_test_id, send_message, wait_for  # noqa: E402

CTL_TIMEOUT = 30  # seconds a single hamrctl call may take (membership changes are slower)
QUIET_WAIT = 3.0  # seconds to watch that something does NOT happen (15 scan intervals)
UNKNOWN_ID = "0000DEADBEEF0000"


def pause(seconds):
    """pause - a bounded, interruptible wait."""
    threading.Event().wait(seconds)


class Ctl:
    """Ctl - the result of one hamrctl run."""

    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err

    def __repr__(self):
        return "hamrctl %s -> exit %d\nstdout: %r\nstderr: %r" % (
            " ".join(self.argv[1:]), self.rc, self.out[:2000], self.err[:2000])

    def json(self):
        return json.loads(self.out)


class HamrctlTest(cluster.ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        """make_cluster - retries an hour apart, and each node its own HTTP port."""
        overrides = {"delivery": {"retry_min": "1h", "retry_max": "1h"}}
        c = cluster.Cluster(cls.env, 3, overrides=overrides)
        if not c.forwarding:
            raise unittest.SkipTest("this hamrd has no follower forwarding ([listen] peer)")
        cls.http = harness.config_key_supported("listen", "http",
                                                "127.0.0.1:%d" % harness.free_port())
        cls.zones = {1: "dc1", 2: "dc1", 3: "dc2"}
        if not harness.config_key_supported("node", "zone", "dc1"):
            cls.zones = None
        for node in c.nodes:
            # Each node its own overrides (the Cluster shares one dict) with its own HTTP port.
            node.overrides = copy.deepcopy(node.overrides)
            if cls.http:
                node.http_port = harness.free_port()
                node.overrides.setdefault("listen", {})["http"] = "127.0.0.1:%d" % node.http_port
            if cls.zones:
                node.overrides.setdefault("node", {})["zone"] = cls.zones[node.id]
            node.write_config()
        return c

    @classmethod
    def setUpEnv(cls):
        super().setUpEnv()
        # The readiness probes are delivered and gone before any case looks at the queue.
        cls.cluster.wait_converged(60)

    def setUp(self):
        super().setUp()
        self.sink_up()
        self.cluster.wait_leader(30)
        self.cleanup_ids = []

    def tearDown(self):
        # Leave no queued message behind for the next case (a later flush would send it).
        self.sink_up()
        leader = self.cluster.leader_hint() or self.cluster.nodes[0]
        for qid in self.cleanup_ids:
            self.ctl(leader, "delete", qid)
        super().tearDown()

    # --- helpers ------------------------------------------------------------

    def ctl(self, node, *args, server=None, timeout=CTL_TIMEOUT):
        """ctl - run hamrctl -s NODE ARGS; never raises for a non-zero exit."""
        server = server or "%s:%d" % (node.host, node.control_port)
        argv = [harness.hamrctl_path(), "-s", server] + list(args)
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=timeout, env=node.ctl_env())
        return Ctl(argv, out.returncode, out.stdout.decode("utf-8", "replace"),
                   out.stderr.decode("utf-8", "replace"))

    def assertCtl(self, res, rc, stdout=None, stderr=None):
        """assertCtl - exit status rc; stdout/stderr match the given regexes."""
        self.assertEqual(res.rc, rc, repr(res))
        if stdout is not None:
            self.assertRegex(res.out, stdout, repr(res))
        if stderr is not None:
            self.assertRegex(res.err, stderr, repr(res))
        if rc == 0:
            self.assertEqual(res.err, "", repr(res))
        else:
            self.assertEqual(res.out, "", repr(res))

    def sink_up(self):
        self.refusing_stop()
        sink = self.cluster.sink
        if sink.proc is None or not sink.proc.alive():
            sink.start()

    def sink_down(self):
        self.refusing_stop()
        sink = self.cluster.sink
        if sink.proc is not None and sink.proc.alive():
            sink.stop()

    def sink_refusing(self):
        """sink_refusing - the next hop answers, but 451 to every recipient: every message
        is tried (a session never suspends the next hop, as a refused connection does)."""
        self.sink_down()
        sink = self.cluster.sink
        self.refusing = self.env.sink(name="sink-451", host=sink.host, port=sink.port,
                                      tempfail_rcpt=".").start()

    def refusing_stop(self):
        refusing = getattr(self, "refusing", None)
        if refusing is not None:
            refusing.stop()
            self.refusing = None

    def follower(self, exclude=()):
        leader = self.cluster.wait_leader(30)
        return next(n for n in self.cluster.nodes if n is not leader and n not in exclude)

    def queue_ids(self, node, *filters):
        """queue_ids - the queue ids "hamrctl --json queue FILTERS" lists on node."""
        res = self.ctl(node, "--json", "queue", *filters)
        self.assertCtl(res, 0)
        return {field(e, "queue_id") for e in field(res.json(), "entries", []) or []}

    def show(self, node, qid):
        """show - the QueueEntry of "hamrctl --json show ID", or None if it is not queued."""
        res = self.ctl(node, "--json", "show", qid)
        if res.rc == 1 and "no message with id" in res.err:
            return None
        self.assertCtl(res, 0)
        (entry,) = field(res.json(), "entries")
        return entry

    def submit(self, node, sender, rcpts, tag, **kw):
        """submit - one message through node (250 required); returns (test id, queue id)."""
        tid = new_test_id(tag)
        msg = make_message(tid, sender, rcpts, **kw)
        res = send_message(node.smtp_port, sender, rcpts, msg, host=node.host, timeout=40)
        self.assertReply(res, 250, "2.0.0", "%s answered %r" % (node.name, res))
        self.assertTrue(res.queue_id, "no queue id in %r" % res.text)
        return tid, res.queue_id

    def queue_deferred(self, sender, rcpts, tag, via=None, **kw):
        """queue_deferred - with the sink down, a message whose every recipient is deferred
        (one failed attempt, next one in 1 h) on every node. Returns (test id, queue id)."""
        self.sink_down()
        via = via or self.cluster.nodes[0]
        tid, qid = self.submit(via, sender, rcpts, tag, **kw)
        self.cleanup_ids.append(qid)

        def deferred(node):
            e = self.show(node, qid)
            rs = field(e, "rcpts", []) if e else []
            return len(rs) == len(rcpts) and all(
                field(r, "state") == "deferred" and int(field(r, "attempts", 0)) >= 1
                for r in rs)

        for node in self.cluster.nodes:
            wait_for(lambda n=node: deferred(n), 30, "%s deferred on %s" % (qid, node.name),
                     interval=0.1)
        return tid, qid

    def wait_everywhere(self, pred, what, timeout=20):
        """wait_everywhere - until pred(node) holds on every cluster node."""
        for node in self.cluster.nodes:
            wait_for(lambda n=node: pred(n), timeout, "%s on %s" % (what, node.name),
                     interval=0.1)

    def control_delivery(self, node=None):
        """control_delivery - a fresh message is delivered: the sink and scheduler work now."""
        node = node or self.cluster.wait_leader(30)
        tid, _ = self.submit(node, "control@example.org", ["control@example.com"], "ctl-control")
        self.cluster.sink.wait_test_id(tid, timeout=20)

    def records_to(self, rcpt):
        return [r for r in self.cluster.sink.records() if r.get("rcpt") == rcpt]

    def http_get(self, node, path):
        conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()

    # --- cases --------------------------------------------------------------

    def test_a_queue_filters(self):
        t1, q1 = self.queue_deferred("qa@example.org", ["a@example.com"], "ctl-qa",
                                     via=self.cluster.node(1))
        t2, q2 = self.queue_deferred("qb@example.org", ["b@other.test"], "ctl-qb",
                                     via=self.cluster.node(2))
        ours = {q1, q2}
        for node in self.cluster.nodes:
            self.assertEqual(self.queue_ids(node), ours, node.name)
            res = self.ctl(node, "queue")
            self.assertCtl(res, 0, stdout=r"-- \d+ Kbytes in 2 messages\.")
            for qid, sender, rcpt in ((q1, "qa@example.org", "a@example.com"),
                                      (q2, "qb@example.org", "b@other.test")):
                self.assertRegex(res.out, r"(?m)^%s\s+\d+ .*%s$" % (re.escape(qid),
                                                                  re.escape(sender)), repr(res))
                self.assertRegex(res.out, r"(?m)^\s+%s  deferred, 1 attempt$" % re.escape(rcpt),
                                 repr(res))
        follower = self.follower()
        cases = [
            (("--state", "all"), ours),
            (("--state", "deferred"), ours),
            (("--state", "pending"), set()),
            (("--state", "held"), set()),
            (("--state", "active"), set()),
            (("--to", "example.com"), {q1}),
            (("--to", "EXAMPLE.COM"), {q1}),
            (("--to", "other.test"), {q2}),
            (("--to", "ample.com"), set()),
            (("--to", "nowhere.test"), set()),
            (("--older-than", "1h"), set()),
            (("--state", "deferred", "--to", "other.test"), {q2}),
        ]
        for filters, want in cases:
            with self.subTest(filters=filters):
                self.assertEqual(self.queue_ids(follower, *filters), want)
        # Both arrived more than a second ago once this returns.
        wait_for(lambda: self.queue_ids(follower, "--older-than", "1s") == ours, 10,
                 "both messages older than 1s")
        res = self.ctl(follower, "queue", "--state", "held")
        self.assertCtl(res, 0, stdout=r"^Mail queue is empty\n$")

        bad = [
            (("--state", "bogus"), r'--state: bad value "bogus"'),
            (("--state", "DEFERRED"), r'--state: bad value "DEFERRED"'),
            (("--state",), r"--state needs a value"),
            (("--older-than", "soon"), r'--older-than: bad value "soon"'),
            (("--older-than", "-1s"), r'--older-than: bad value "-1s"'),
            (("--to", ""), r'--to: bad value ""'),
            (("--to", "a b"), r'--to: bad value "a b"'),
            (("--frob", "x"), r'unknown queue filter "--frob"'),
            (("deferred",), r"needs a value|unknown queue filter"),
        ]
        for args, err in bad:
            with self.subTest(args=args):
                res = self.ctl(follower, "queue", *args)
                self.assertCtl(res, 2, stderr=err)
                self.assertIn("usage: hamrctl [options] queue", res.err)
        # Bad input changed nothing.
        for node in self.cluster.nodes:
            self.assertEqual(self.queue_ids(node), ours, node.name)
        self.assertEqual(self.cluster.sink.by_test_id(t1) + self.cluster.sink.by_test_id(t2), [])

    def test_b_show_on_follower(self):
        leader = self.cluster.wait_leader(30)
        follower = self.follower()
        rcpts = ["show1@example.com", "show2@other.test"]
        # The TLS fields are format 2: recorded once every node runs at cluster level 2.
        self.wait_everywhere(lambda n: int(field(n.status(), "cluster_level", 0) or 0) >= 2,
                             "cluster feature level 2")
        tid, qid = self.queue_deferred("shower@example.org", rcpts, "ctl-show", via=leader,
                                       subject="show me")
        res = self.ctl(follower, "show", qid)
        self.assertCtl(res, 0)
        out = res.out
        self.assertRegex(out, r"(?m)^queue id:    %s$" % re.escape(qid))
        self.assertRegex(out, r"(?m)^sender:      <shower@example.org>$")
        self.assertRegex(out, r"(?m)^client:      127\.0\.0\.1 \(helo client\.test\)$")
        self.assertRegex(out, r"(?m)^size:        [1-9]\d*$")
        self.assertRegex(out, r"(?m)^arrival:     \d{4}-\d\d-\d\d ")
        self.assertRegex(out, r"(?m)^expires:     \d{4}-\d\d-\d\d ")
        for rcpt in rcpts:
            self.assertRegex(out, r"(?m)^  %s\n    state: deferred, attempts: 1, next attempt: "
                             r"\d{4}-\d\d-\d\d .*\n    last error: \S.*\n"
                             r"    tls: may none \(no connection\)$" % re.escape(rcpt))
        self.assertRegex(out, r"(?m)^headers:$")
        self.assertRegex(out, r"(?m)^  X-Test-Id: %s$" % re.escape(tid))
        self.assertRegex(out, r"(?m)^  Subject: show me$")
        self.assertRegex(out, r"(?m)^  Received: ")
        self.assertNotIn("This is test message", out, "show printed the body")

        entry = self.show(follower, qid)
        self.assertEqual(field(entry, "queue_id"), qid)
        self.assertEqual(field(entry, "sender"), "shower@example.org")
        self.assertFalse(field(entry, "held"))
        now_ms = time.time() * 1000
        got = {field(r, "addr"): r for r in field(entry, "rcpts")}
        self.assertEqual(sorted(got), sorted(rcpts))
        for r in got.values():
            self.assertEqual(field(r, "state"), "deferred")
            self.assertEqual(int(field(r, "attempts")), 1)
            self.assertRegex(field(r, "last_error"), r"connect|refused|\d{3}")
            # retry_min is 1 h: the next attempt is far away.
            self.assertGreater(int(field(r, "next_attempt_ms")), now_ms + 30 * 60 * 1000)
            # The sink was down: policy may (the default), no connection, so no TLS.
            self.assertEqual(field(r, "tls_policy"), "may")
            self.assertEqual(field(r, "tls"), "none (no connection)")
        self.assertIn("X-Test-Id: %s" % tid, field(entry, "headers"))
        # The same message on every node.
        for node in self.cluster.nodes:
            other = self.show(node, qid)
            self.assertEqual(field(other, "size"), field(entry, "size"), node.name)
            self.assertEqual(field(other, "headers"), field(entry, "headers"), node.name)
            self.assertEqual(field(other, "rcpts"), field(entry, "rcpts"), node.name)

        res = self.ctl(follower, "show", UNKNOWN_ID)
        self.assertCtl(res, 1, stderr=r"^hamrctl: no message with id %s" % UNKNOWN_ID)
        res = self.ctl(follower, "--json", "show", UNKNOWN_ID)
        self.assertCtl(res, 1, stderr=r"no message with id %s" % UNKNOWN_ID)
        for bad in ("../x", "a/b", "-x", "x y", "", "A" * 80, "id\x01"):
            with self.subTest(id=bad):
                res = self.ctl(follower, "show", bad)
                self.assertCtl(res, 2, stderr=r"not a queue id")
        res = self.ctl(follower, "show")
        self.assertCtl(res, 2, stderr=r"usage: hamrctl \[options\] show ID")
        res = self.ctl(follower, "show", qid, qid)
        self.assertCtl(res, 2, stderr=r"usage: hamrctl \[options\] show ID")

    def test_c_hold_release(self):
        leader = self.cluster.wait_leader(30)
        follower = self.follower()
        tid, qid = self.queue_deferred("holder@example.org", ["held@example.com"], "ctl-hold")
        res = self.ctl(follower, "hold", qid)
        self.assertCtl(res, 0, stdout=r"^hold: %s\n$" % re.escape(qid))
        self.wait_everywhere(lambda n: field(self.show(n, qid), "held") is True, "held")
        for node in self.cluster.nodes:
            self.assertEqual(self.queue_ids(node, "--state", "held"), {qid}, node.name)
            self.assertRegex(self.ctl(node, "show", qid).out,
                             r"(?m)^queue id:    %s \(held\)$" % re.escape(qid))
            self.assertRegex(self.ctl(node, "queue").out, r"(?m)^%s!\s" % re.escape(qid))
            self.assertEqual(int(field(node.status(), "queue_held")), 1, node.name)
        # Due now, sink up, scheduler busy: a held message still stays.
        res = self.ctl(follower, "flush", qid)
        self.assertCtl(res, 0, stdout=r"^flush: %s\n$" % re.escape(qid))
        self.sink_up()
        self.control_delivery(leader)
        pause(QUIET_WAIT)
        self.assertEqual(self.cluster.sink.by_test_id(tid), [], "a held message was delivered")
        self.assertIsNotNone(self.show(leader, qid))

        res = self.ctl(follower, "release", qid)
        self.assertCtl(res, 0, stdout=r"^release: %s\n$" % re.escape(qid))
        (rec,) = self.cluster.sink.wait_test_id(tid, timeout=20)
        self.assertEqual(rec["rcpt"], "held@example.com")
        self.wait_everywhere(lambda n: self.show(n, qid) is None, "released message gone")
        pause(QUIET_WAIT / 3)
        self.assertEqual(len(self.cluster.sink.by_test_id(tid)), 1, "delivered more than once")
        for node in self.cluster.nodes:
            self.assertEqual(int(field(node.status(), "queue_held")), 0, node.name)
        # Both verbs on an unknown id: exit 1, nothing changes.
        for verb in ("hold", "release"):
            res = self.ctl(follower, verb, UNKNOWN_ID)
            self.assertCtl(res, 1, stderr=r"no message with id %s" % UNKNOWN_ID)
            res = self.ctl(follower, verb, "../x")
            self.assertCtl(res, 2, stderr=r"not a queue id")
            res = self.ctl(follower, verb)
            self.assertCtl(res, 2, stderr=r"usage: hamrctl \[options\] %s ID" % verb)

    def test_d_delete(self):
        follower = self.follower()
        sender = "del-%s@example.org" % uuid.uuid4().hex[:8]
        tid, qid = self.queue_deferred(sender, ["gone@example.com"], "ctl-del")
        res = self.ctl(follower, "delete", qid)
        self.assertCtl(res, 0, stdout=r"^delete: %s\n$" % re.escape(qid))
        self.wait_everywhere(lambda n: qid not in self.queue_ids(n), "deleted message gone")
        for node in self.cluster.nodes:
            res = self.ctl(node, "show", qid)
            self.assertCtl(res, 1, stderr=r"no message with id %s" % re.escape(qid))
        res = self.ctl(follower, "delete", qid)
        self.assertCtl(res, 1, stderr=r"no message with id %s" % re.escape(qid))
        # Sink up and everything due: the deleted message and a DSN for it never come.
        self.sink_up()
        self.assertCtl(self.ctl(follower, "flush"), 0, stdout=r"^flush: all messages\n$")
        self.control_delivery()
        pause(QUIET_WAIT)
        self.assertEqual(self.cluster.sink.by_test_id(tid), [], "a deleted message was delivered")
        self.assertEqual(self.records_to(sender), [], "a DSN was sent for a deleted message")
        self.cluster.wait_converged(30)

    def test_e_flush(self):
        leader = self.cluster.wait_leader(30)
        tid, qid = self.queue_deferred("flusher@example.org", ["flushed@example.com"],
                                       "ctl-flush")
        self.sink_up()
        self.control_delivery(leader)
        pause(QUIET_WAIT / 3)
        self.assertEqual(self.cluster.sink.by_test_id(tid), [],
                         "delivered before its 1h retry without a flush")
        t0 = time.monotonic()
        res = self.ctl(self.follower(), "flush")
        self.assertCtl(res, 0, stdout=r"^flush: all messages\n$")
        (rec,) = self.cluster.sink.wait_test_id(tid, timeout=15)
        cluster.cluster_log("flush: delivered %.2fs after hamrctl flush" % (time.monotonic() - t0))
        self.assertEqual(rec["rcpt"], "flushed@example.com")
        self.wait_everywhere(lambda n: self.show(n, qid) is None, "flushed message gone")
        pause(QUIET_WAIT / 3)
        self.assertEqual(len(self.cluster.sink.by_test_id(tid)), 1)
        res = self.ctl(leader, "flush", UNKNOWN_ID)
        self.assertCtl(res, 1, stderr=r"no message with id %s" % UNKNOWN_ID)
        res = self.ctl(leader, "flush", "a", "b")
        self.assertCtl(res, 2, stderr=r"usage: hamrctl \[options\] flush \[ID\]")

    def test_f_bounce(self):
        follower = self.follower()
        sender = "bnc-%s@example.org" % uuid.uuid4().hex[:8]
        rcpts = ["b1@example.com", "b2@other.test"]
        tid, qid = self.queue_deferred(sender, rcpts, "ctl-bounce")
        self.sink_up()
        res = self.ctl(follower, "bounce", qid)
        self.assertCtl(res, 0, stdout=r"^bounce: %s\n$" % re.escape(qid))
        (dsn,) = wait_for(lambda: self.records_to(sender), 20, "a DSN to %s" % sender)
        self.assertEqual(dsn["mail_from"], "", "a DSN must have the null sender")
        body = self.cluster.sink.read_file(dsn).decode("utf-8", "replace")
        self.assertRegex(body, r"(?i)content-type: multipart/report;"
                               r".*report-type=\"?delivery-status")
        for rcpt in rcpts:
            self.assertRegex(body, r"(?i)final-recipient: rfc822;\s*%s" % re.escape(rcpt))
        self.assertRegex(body, r"(?i)action: failed")
        self.cluster.wait_converged(30)
        pause(QUIET_WAIT / 3)
        self.assertEqual(len(self.records_to(sender)), 1, "more than one DSN")
        self.assertEqual(self.cluster.sink.by_test_id(tid), [], "the bounced message was delivered")
        for rcpt in rcpts:
            self.assertEqual(self.records_to(rcpt), [], "%s got the bounced message" % rcpt)
        res = self.ctl(follower, "bounce", qid)
        self.assertCtl(res, 1, stderr=r"no message with id %s" % re.escape(qid))
        res = self.ctl(follower, "bounce", "../x")
        self.assertCtl(res, 2, stderr=r"not a queue id")

    def test_g_transfer(self):
        n1, n2 = self.cluster.node(1), self.cluster.node(2)
        if self.cluster.wait_leader(30) is n2:
            self.cluster.transfer(n1)
        leader = self.cluster.wait_leader(30)
        via = next(n for n in self.cluster.nodes if n is not leader and n is not n2)
        res = self.ctl(via, "transfer", "2")
        self.assertCtl(res, 0, stdout=r"^leader is now node 2\n$")
        new = wait_for(lambda: self.cluster.agreed_leader() is n2 and n2, 20, "node 2 to lead")
        self.assertIs(new, n2)
        for node in self.cluster.nodes:
            self.assertEqual(int(field(node.status(), "leader_id")), 2, node.name)
        # A new leader publishes its control address in a committed entry; until every
        # node has applied it, a follower cannot redirect hamrctl to it.
        ctl2 = "%s:%d" % (n2.host, n2.control_port)
        self.wait_everywhere(lambda n: field(n.status(), "leader_control") == ctl2,
                             "node 2's control address known", timeout=10)
        res = self.ctl(via, "transfer", "2")
        self.assertCtl(res, 0, stdout=r"^node 2 already leads\n$")
        # Not a voter (exit 1, from the leader), not a number (exit 2, from hamrctl).
        res = self.ctl(via, "transfer", "99")
        self.assertCtl(res, 1, stderr=r"^hamrctl: transfer: ")
        for bad in ("x", "0", "-1", "2x", "99999999999999999999999"):
            with self.subTest(target=bad):
                res = self.ctl(via, "transfer", bad)
                self.assertCtl(res, 2, stderr=r'not a node id: "%s"' % re.escape(bad))
        res = self.ctl(via, "transfer", "1", "3")
        self.assertCtl(res, 2, stderr=r"usage: hamrctl \[options\] transfer \[NODE\]")
        self.assertIs(self.cluster.wait_leader(10), n2, "bad transfers moved leadership")
        self.cluster.probe(n2, timeout=15)

    def members(self, node):
        return {int(field(m, "id")): field(m, "role") for m in field(node.status(), "members")}

    def test_h_membership_bad_input(self):
        follower = self.follower()
        three = {1: "voter", 2: "voter", 3: "voter"}
        cases = [
            (("add", "9"), 2, r"usage: hamrctl \[options\] add NODE IP:PORT"),
            (("add",), 2, r"usage: hamrctl \[options\] add NODE IP:PORT"),
            (("add", "9", "nothost"), 2, r'not an IPV4:PORT or \[IPV6\]:PORT address: "nothost"'),
            (("add", "9", "localhost:7000"), 2, r'not an IPV4:PORT or \[IPV6\]:PORT address: "localhost:7000"'),
            (("add", "9", "127.0.0.1"), 2, r'not an IPV4:PORT or \[IPV6\]:PORT address: "127.0.0.1"'),
            (("add", "9", "127.0.0.1:99999"), 2, r'not an IPV4:PORT or \[IPV6\]:PORT address'),
            (("add", "x", "127.0.0.1:7000"), 2, r'not a node id: "x"'),
            (("add", "0", "127.0.0.1:7000"), 2, r'not a node id: "0"'),
            (("promote",), 2, r"usage: hamrctl \[options\] promote NODE"),
            (("promote", "x"), 2, r'not a node id: "x"'),
            (("remove",), 2, r"usage: hamrctl \[options\] remove NODE"),
            (("remove", "-3"), 2, r'not a node id: "-3"'),
            (("remove", "99"), 1, r"^hamrctl: remove 99: "),
            (("promote", "99"), 1, r"^hamrctl: promote 99: "),
        ]
        for args, rc, err in cases:
            with self.subTest(args=args):
                res = self.ctl(follower, *args)
                self.assertCtl(res, rc, stderr=err)
        # The leader refuses to remove itself.
        leader = self.cluster.wait_leader(30)
        res = self.ctl(follower, "remove", str(leader.id))
        self.assertCtl(res, 1, stderr=r"remove: node %d leads; transfer leadership first"
                       % leader.id)
        for node in self.cluster.nodes:
            self.assertEqual(self.members(node), three, node.name)

    def test_i_add_and_remove_fourth_node(self):
        c = self.cluster
        n1 = c.node(1)
        overrides = copy.deepcopy(n1.overrides)
        overrides.setdefault("cluster", {}).update(voters=None, join="yes")
        if self.http:
            overrides["listen"]["http"] = "127.0.0.1:%d" % harness.free_port()
        # A zone of its own (given to add too): dc1 keeps 2 of the 4 voters, no majority.
        zone = []
        if self.zones:
            overrides["node"]["zone"] = "dc3"
            zone = ["--zone", "dc3"]
        n4 = self.env.node(node_id=4, peer=True, relayhost_port=c.sink.port, overrides=overrides)
        self.assertNotIn("voters", n4.config_sections()["cluster"])
        n4.start(wait=False)

        def answers():
            n4.check_alive()
            return self.ctl(n4, "status").rc == 0

        wait_for(answers, 30, "node4 to answer hamrctl")
        follower = self.follower()
        res = self.ctl(follower, "--timeout", "60", "add", "4", "127.0.0.1:%d" % n4.raft_port,
                       *zone, timeout=90)
        self.assertCtl(res, 0, stdout=r"^add 4: done\n$")
        four = {1: "voter", 2: "voter", 3: "voter", 4: "voter"}
        for node in c.nodes + [n4]:
            wait_for(lambda n=node: self.members(n) == four, 30, "4 voters on %s" % node.name,
                     interval=0.2)
        res = self.ctl(follower, "status")
        self.assertCtl(res, 0, stdout=r"(?m)^\s+4 127\.0\.0\.1:%d voter( zone dc3)?$"
                       % n4.raft_port)
        res = self.ctl(follower, "add", "4", "127.0.0.1:%d" % n4.raft_port)
        self.assertCtl(res, 1, stderr=r"^hamrctl: add 4: ")
        # Node 4 takes mail (it forwards to the leader) and it is delivered once.
        wait_for(lambda: int(field(n4.status(), "leader_id", 0) or 0) == c.wait_leader(10).id,
                 30, "node4 to know the leader")
        tid, _ = self.submit(n4, "four@example.org", ["four@example.com"], "ctl-node4")
        (rec,) = c.sink.wait_test_id(tid, timeout=20)
        self.assertEqual(rec["rcpt"], "four@example.com")
        wait_for(lambda: n4.queue() == [], 20, "node4 queue empty")

        res = self.ctl(follower, "--timeout", "60", "remove", "4", timeout=90)
        self.assertCtl(res, 0, stdout=r"^remove 4: done\n$")
        three = {1: "voter", 2: "voter", 3: "voter"}
        self.wait_everywhere(lambda n: self.members(n) == three, "3 voters again")
        res = self.ctl(follower, "remove", "4")
        self.assertCtl(res, 1, stderr=r"^hamrctl: remove 4: ")
        rc = n4.stop()
        self.assertEqual(rc, 0, "node4 exited with %s on SIGTERM after its removal" % rc)
        c.probe(c.wait_leader(30), timeout=15)

    def member_zones(self, node):
        """member_zones - {id: zone} of node's status ("" for none)."""
        return {int(field(m, "id")): field(m, "zone", "") or ""
                for m in field(node.status(), "members") or []}

    def test_m_zones(self):
        if not self.zones:
            self.skipTest("this hamrd has no [node] zone")
        c = self.cluster
        # Zones are kept from cluster level 6 on; each node publishes its own again then.
        self.wait_everywhere(lambda n: self.member_zones(n) == self.zones, "every zone known",
                             timeout=30)
        node = c.node(1)
        self.assertEqual(field(node.status(), "zone"), "dc1")
        res = self.ctl(node, "status")
        self.assertCtl(res, 0, stdout=r"(?m)^zone:        dc1$")
        self.assertCtl(res, 0, stdout=r"(?m)^\s+3 127\.0\.0\.1:%d voter.* zone dc2$"
                       % c.node(3).raft_port)
        self.assertCtl(res, 0, stdout=r"(?m)^zones:       dc1 2, dc2 1 \(voters\); warning: "
                       r"zone dc1 holds 2 of 3 voters, losing it loses quorum$")
        # A fourth voter in dc1 would give dc1 3 of 4: refused, nothing changes.
        three = {1: "voter", 2: "voter", 3: "voter"}
        port = harness.free_port()
        res = self.ctl(self.follower(), "add", "5", "127.0.0.1:%d" % port, "--zone", "dc1")
        self.assertCtl(res, 1, stderr=r"^hamrctl: add 5: refused: zone dc1 would hold 3 of the "
                       r"4 voters \(zones: dc1 3, dc2 1\): losing that zone would lose the "
                       r"quorum; .*--force")
        for n in c.nodes:
            self.assertEqual(self.members(n), three, n.name)

    def member_draining(self, asked, node_id):
        """member_draining - node_id's draining flag in asked's status, None if not listed."""
        for m in field(asked.status(), "members") or []:
            if int(field(m, "id", 0)) == node_id:
                return field(m, "draining") is True
        return None

    def test_j_drain(self):
        node = self.follower()
        other = next(n for n in self.cluster.nodes if n is not node)
        if self.http:
            self.assertEqual(self.http_get(node, "/health/ready")[0], 200)
        res = self.ctl(node, "drain")
        self.assertCtl(res, 0, stdout=r"^draining: new SMTP sessions get 421")
        try:
            conn = harness.RawSMTP(node.smtp_port, host=node.host, timeout=10)
            try:
                self.assertEqual(conn.greeting[0], 421, conn.greeting)
                self.assertIn("4.3.2", conn.greeting[1])
            finally:
                conn.close()
            res = send_message(node.smtp_port, "d@example.org", ["d@example.com"],
                               make_message("drain-x", "d@example.org", ["d@example.com"]))
            self.assertEqual(res.code, 421, repr(res))
            if self.http:
                code, body = self.http_get(node, "/health/ready")
                self.assertEqual(code, 503, body)
                self.assertIn("draining", body)
            res = self.ctl(node, "status")
            self.assertCtl(res, 0, stdout=r"(?m)^draining:    yes$")
            self.assertIs(field(node.status(), "draining"), True)
            self.assertIs(field(other.status(), "draining"), False)
            # The other nodes still take mail.
            tid, _ = self.submit(other, "nd@example.org", ["nd@example.com"], "ctl-notdrained")
            self.cluster.sink.wait_test_id(tid, timeout=20)
            # drain/undrain ID sent to another node: hamrctl is told where node ID
            # is and asks it (draining twice is harmless).
            res = self.ctl(other, "drain", str(node.id))
            self.assertCtl(res, 0, stdout=r"^draining: new SMTP sessions get 421")
            self.assertIs(field(other.status(), "draining"), False)
            self.assertIs(field(node.status(), "draining"), True)
            # Every node's status shows which members drain (the node directory).
            harness.wait_for(lambda: self.member_draining(other, node.id) is True, 15,
                             "node %d shown draining by node %d" % (node.id, other.id))
            res = self.ctl(node, "undrain", "x")
            self.assertCtl(res, 2, stderr=r'not a node id: "x"')
        finally:
            res = self.ctl(other, "undrain", str(node.id))
        self.assertCtl(res, 0, stdout=r"^undrained\n$")
        harness.wait_for(lambda: self.member_draining(other, node.id) is False, 15,
                         "node %d shown undrained by node %d" % (node.id, other.id))
        res = self.ctl(node, "status")
        self.assertCtl(res, 0, stdout=r"(?m)^draining:    no$")
        conn = harness.RawSMTP(node.smtp_port, host=node.host, timeout=10)
        try:
            self.assertEqual(conn.greeting[0], 220, conn.greeting)
        finally:
            conn.close()
        if self.http:
            code, body = self.http_get(node, "/health/ready")
            self.assertEqual(code, 200, body)
        tid, _ = self.submit(node, "ud@example.org", ["ud@example.com"], "ctl-undrained")
        self.cluster.sink.wait_test_id(tid, timeout=20)

    def test_k_cli(self):
        node = self.cluster.node(1)
        dead = "127.0.0.1:%d" % harness.free_port()
        for args in (("status",), ("--json", "queue"), ("hold", "ABC123")):
            with self.subTest(args=args):
                res = self.ctl(node, *args, server=dead)
                self.assertCtl(res, 1, stderr=r"^hamrctl: cannot connect to ")
        res = self.ctl(node, "frobnicate")
        self.assertCtl(res, 2, stderr=r'unknown command "frobnicate"')
        res = self.ctl(node, "--frob", "status")
        self.assertCtl(res, 2, stderr=r'unknown option "--frob"')
        # -s takes a control socket's path now (HOST:PORT still means TCP); -a is TCP only.
        res = self.ctl(node, "status", server="nothostport")
        self.assertCtl(res, 1, stderr=r"^hamrctl: cannot connect to control socket nothostport: "
                       r"No such file or directory")
        res = self.ctl(node, "-a", "nothostport", "status", server="127.0.0.1:1")
        self.assertCtl(res, 2, stderr=r"give one of -s, -a and -c")
        out = subprocess.run([harness.hamrctl_path(), "-a", "nothostport", "status"],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=CTL_TIMEOUT)
        self.assertEqual(out.returncode, 2, out)
        self.assertIn(b'hamrctl: -a: not HOST:PORT: "nothostport"', out.stderr)
        res = self.ctl(node, "--timeout", "0", "status")
        self.assertCtl(res, 2, stderr=r"--timeout")
        res = self.ctl(node, "status", "extra")
        self.assertCtl(res, 2, stderr=r"usage: hamrctl \[options\] status")
        res = self.ctl(node, "version")
        self.assertCtl(res, 0, stdout=r"(?m)^hamrctl \S+\nhamrd \S+")
        res = self.ctl(node, "help")
        self.assertCtl(res, 0, stdout=r"(?m)^usage: hamrctl ")
        for args in (("--json", "status"), ("status", "--json")):
            with self.subTest(args=args):
                res = self.ctl(node, *args)
                self.assertCtl(res, 0)
                st = field(res.json(), "status")
                self.assertEqual(int(field(st, "id")), 1)
                self.assertIn(field(st, "state"), ("leader", "follower"))
                self.assertEqual(len(field(st, "members")), 3)
        for args in (("--json", "queue", "--state", "all"), ("queue", "--state", "all", "--json"),
                     ("queue", "--json", "--state", "all")):
            with self.subTest(args=args):
                res = self.ctl(node, *args)
                self.assertCtl(res, 0)
                self.assertIsInstance(field(res.json(), "entries"), list)
        res = self.ctl(node, "--json", "show", UNKNOWN_ID)
        self.assertCtl(res, 1, stderr=r"no message with id")

    def test_l_queue_pages(self):
        # Refused connections would suspend the next hop: one probe every 10 s, so only the
        # first few messages would have had an attempt within the bound below.
        self.sink_refusing()
        via = self.cluster.node(1)
        sent = []
        for i in range(25):
            _, qid = self.submit(via, "page@example.org", ["page%d@example.com" % i],
                                 "ctl-page")
            self.cleanup_ids.append(qid)
            sent.append(qid)
        follower = self.follower()
        # Each one's first attempt has failed: the --state filter below matches them all.
        wait_for(lambda: self.queue_ids(follower, "--state", "deferred") == set(sent), 30,
                 "25 messages deferred on %s" % follower.name, interval=0.2)
        res = self.ctl(follower, "--json", "status")
        self.assertCtl(res, 0)
        self.assertEqual(int(field(field(res.json(), "status"), "queue_messages")), 25)

        pages, after = [], None
        while True:
            args = ["--json", "queue", "--limit", "10"] + (["--after", after] if after else [])
            res = self.ctl(follower, *args)
            self.assertCtl(res, 0)
            d = res.json()
            pages.append([field(e, "queue_id") for e in field(d, "entries", []) or []])
            after = field(d, "next_after", "")
            if not after:
                break
            self.assertEqual(after, pages[-1][-1], repr(res))
            self.assertLess(len(pages), 5, pages)
        self.assertEqual([len(p) for p in pages], [10, 10, 5])
        self.assertEqual([q for p in pages for q in p], sent)

        res = self.ctl(follower, "queue", "--state", "deferred", "--limit", "10")
        self.assertCtl(res, 0, stdout=r"-- \d+ Kbytes in 10 messages\.\n"
                       r"\(more: hamrctl queue --state deferred --limit 10 --after %s\)\n$"
                       % re.escape(sent[9]))
        res = self.ctl(follower, "queue", "--limit", "10", "--after", sent[19])
        self.assertCtl(res, 0, stdout=r"-- \d+ Kbytes in 5 messages\.\n$")
        res = self.ctl(follower, "queue", "--limit", "0")
        self.assertCtl(res, 2, stderr=r'--limit: bad value "0"')


if __name__ == "__main__":
    unittest.main(verbosity=2)
