#!/usr/bin/python3
"""test_haproxy.py - three hamr nodes behind Debian's HAProxy, as deploy/haproxy.cfg sets it up.

The nodes run with proxy_protocol = on and proxy_networks = 127.0.0.2/32;
HAProxy listens on 127.0.0.1, connects to the nodes from 127.0.0.2 with
send-proxy-v2 and checks GET /health/ready on each node's http port
(inter 1s fall 2 rise 2). Everything is on 127.0.0.1-3.

  a  routing: a message sent to the balancer from 127.0.0.3 is delivered and
     hamr's Received: header and the node's log name 127.0.0.3 (the PROXY
     header's source), not the balancer's 127.0.0.2; a direct connection
     to a node from 127.0.0.1 (not a balancer) is closed without a greeting.
  b  kill -9 of a node under bounded load through the balancer: HAProxy marks
     it DOWN within a bound, mail keeps flowing, no 5xx, the oracle finds
     nothing lost, unexpected or corrupted; the node comes back UP after a
     restart.
  c  quorum loss: the two other nodes are stopped; the survivor's
     /health/ready turns 503, HAProxy marks it DOWN, and a new connection
     through the balancer fails fast instead of being served.

Skips when /usr/sbin/haproxy is missing (apt-get install haproxy).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from cluster import LEASE_TIME, cluster_log  # noqa: E402
from harness import make_message, new_test_id, send_message  # noqa: E402

MARK_DOWN_BOUND = 8.0  # inter 1s x fall 2, plus a loaded 2-core machine
HEALTH_503_BOUND = 15.0  # two election timeouts without a leader, plus slack
CLIENT_ADDR = "127.0.0.3"


class HaproxyTest(cluster.BalancerTestCase):
    def setUp(self):
        """setUp - every node running and taking mail, and HAProxy sending to all of them."""
        super().setUp()
        self.revive_all()
        for node in self.cluster.nodes:
            self.lb.wait_state(node, "UP", 20)

    def send_via_lb(self, tid, source=None, timeout=30):
        msg = make_message(tid, "lb@example.org", ["lb@example.com"])
        return send_message(self.lb.port, "lb@example.org", ["lb@example.com"], msg,
                            host=self.lb.host, source=source, timeout=timeout)

    def test_a_routing_and_client_address(self):
        tid = new_test_id("lb-a")
        res = self.send_via_lb(tid, source=CLIENT_ADDR)
        self.assertReply(res, 250)
        rec = self.cluster.sink.wait_test_id(tid, timeout=30)[0]
        text = self.cluster.sink.read_file(rec).decode("utf-8", "replace")
        # hamr's own Received: is the first header of the delivered message; unfold it.
        self.assertTrue(text.startswith("Received: from client.test"), text[:300])
        lines = text.split("\r\n")
        folded = [lines[0]]
        for line in lines[1:]:
            if not line[:1] in (" ", "\t"):
                break
            folded.append(line.strip())
        hamr_line = " ".join(folded)
        self.assertIn("(%s)" % CLIENT_ADDR, hamr_line, "Received: %r" % hamr_line)
        self.assertNotIn("127.0.0.2", hamr_line)
        logs = "".join(n.proc.log_text() for n in self.cluster.nodes if n.proc)
        self.assertIn(CLIENT_ADDR, logs, "no node logged the client address from the header")

        # A direct client from 127.0.0.1 is not a balancer: closed without a word.
        for node in self.cluster.nodes:
            t0 = time.monotonic()
            conn = harness.RawSMTP(node.smtp_port, host=node.host, timeout=10,
                                   read_greeting=False)
            try:
                try:
                    got = conn.reply()
                except (ConnectionResetError, BrokenPipeError):
                    got = (None, "")
            finally:
                conn.close()
            self.assertEqual(got, (None, ""), "%s greeted a non-balancer" % node.name)
            self.assertLess(time.monotonic() - t0, 5.0, "%s: refusal not at once" % node.name)
        cluster_log("lb-a: Received %r; direct connections refused" % hamr_line[:160])

    def test_b_kill9_node_under_load(self):
        leader = self.cluster.wait_leader()
        victim = next(n for n in self.cluster.nodes if n is not leader)
        target = self.lb.target()
        self.load = cluster.LoadGen(self.cluster, "lb-b", threads=4, max_messages=20000,
                                    max_seconds=90, targets=lambda: [target], pace=0.05).start()
        self.load.wait_ok(15, 30)
        t_kill, wall_kill = time.monotonic(), time.time()
        self.cluster.kill9(victim)
        self.lb.wait_state(victim, "DOWN", MARK_DOWN_BOUND)
        t_down = time.monotonic()
        cluster_log("lb-b: haproxy marked %s DOWN %.2fs after kill -9" % (victim.name,
                                                                          t_down - t_kill))
        self.load.wait_ok(60, 30, after=t_down)
        settled = t_down + 1.0
        self.cluster.restart(victim)
        self.lb.wait_state(victim, "UP", 60)
        self.cluster.wait_caught_up(victim, 60)
        self.load.wait_ok(10, 20, after=time.monotonic())
        self.load.stop()
        bad = self.load.select(lambda a: a.permfail)
        self.assertEqual(bad, [], "5xx through the balancer: %r" % bad[:5])
        # Once HAProxy has taken the dead node out, no new transaction may fail.
        late = self.load.select(lambda a: a.t_start >= settled and a.t_end <= t_down + 20
                                and not a.ok)
        self.assertEqual(late, [], "failures after the node was marked down: %r" % late[:5])
        cluster.oracle_run(self, self.cluster, self.load, "haproxy-kill9", events=[wall_kill],
                           timeout=LEASE_TIME * 3 + 60)

    def test_c_no_quorum_marked_down(self):
        survivor = self.cluster.node(1)
        for node in self.cluster.nodes:
            if node is not survivor:
                self.cluster.stop(node)
        code, body = harness.wait_for(
            lambda: (lambda r: r if r[0] == 503 else None)(self.cluster.health(survivor)),
            HEALTH_503_BOUND, "%s /health/ready to say 503" % survivor.name, interval=0.2)
        cluster_log("lb-c: %s says %d %r" % (survivor.name, code, body))
        self.assertTrue(body.startswith("not ready:"), body)
        self.lb.wait_state(survivor, "DOWN", MARK_DOWN_BOUND)
        # No server is up: HAProxy closes new connections at once, nobody gets a 250.
        t0 = time.monotonic()
        res = self.send_via_lb(new_test_id("lb-c"), timeout=10)
        took = time.monotonic() - t0
        self.assertNotEqual(res.code, 250, res)
        self.assertIsNone(res.code, "expected the balancer to close the connection: %r" % res)
        self.assertLess(took, 3.0, "the balancer did not fail fast (%.2fs)" % took)
        cluster_log("lb-c: through the balancer without quorum: %r after %.2fs" % (res, took))


if __name__ == "__main__":
    harness.main()
