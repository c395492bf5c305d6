#!/usr/bin/python3
"""test_cluster_queue_limit.py - the cluster-wide queue limit on a 3-node hamr cluster.

Every node has [storage] queue_max_messages = LIMIT. With the next hop (the
sink) stopped, LIMIT messages sent through the three nodes are accepted and
stay queued (deferred); then MAIL gets "452 4.3.1 Insufficient system
storage: mail queue full" on every node, followers as well as the leader,
since all of them count the same replicated queue. /health/ready stays 200
and says "queue full" in its body; /metrics shows hamr_queue_full 1 and the
limit. After the sink comes back and the queue drains, every node takes
mail again and hamr_queue_full is 0.
"""

import http.client
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from harness import mail_reply, make_message, new_test_id, send_message, wait_for  # noqa: E402

LIMIT = 5
APPLY_BOUND = 20.0  # a committed message is applied on every node
DRAIN_BOUND = 60.0  # the sink is back -> the queue is empty (retry_max 4s)
FULL_TEXT = "452 4.3.1 Insufficient system storage: mail queue full"


class ClusterQueueLimitTest(cluster.ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        c = cluster.Cluster(cls.env, 3, overrides={"storage": {"queue_max_messages": str(LIMIT)}})
        c.add_http()
        return c

    def ready(self, node):
        """ready - (status, body) of node's /health/ready."""
        conn = http.client.HTTPConnection(node.host, node.http_port, timeout=10)
        try:
            conn.request("GET", "/health/ready")
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def gauge(self, node, name):
        m = re.search(r"(?m)^%s (\S+)$" % name, node.metrics())
        self.assertIsNotNone(m, "%s missing from %s's /metrics" % (name, node.name))
        return float(m.group(1))

    def wait_queued(self, n, bound):
        """wait_queued - every node's applied queue holds n messages."""
        nodes = self.cluster.nodes
        wait_for(lambda: all(node.queue_messages() == n for node in nodes), bound,
                 "every node to hold %d queued messages" % n, interval=0.2)

    def send(self, node, label):
        tid = new_test_id(label)
        rcpt = "limit@example.com"
        msg = make_message(tid, "limit@example.org", [rcpt])
        return send_message(node.smtp_port, "limit@example.org", [rcpt], msg, host=node.host,
                            timeout=40)

    def test_limit_on_every_node(self):
        c = self.cluster
        nodes = c.nodes if c.forwarding else [c.wait_leader()]
        # The readiness probes are delivered first: start from an empty queue.
        self.wait_queued(0, DRAIN_BOUND)
        for node in c.nodes:
            self.assertEqual(self.gauge(node, "hamr_queue_limit_messages"), LIMIT)
            self.assertEqual(self.gauge(node, "hamr_queue_limit_bytes"), 0)
            self.assertEqual(self.gauge(node, "hamr_queue_full"), 0)

        c.sink.stop()
        for i in range(LIMIT):
            node = nodes[i % len(nodes)]
            res = self.send(node, "limit-%d" % i)
            self.assertEqual(res.code, 250, "message %d through %s: %r" % (i, node.name, res))
        self.wait_queued(LIMIT, APPLY_BOUND)

        for node in nodes:
            code, text = mail_reply(node.smtp_port, node.host, "limit@example.org")
            self.assertEqual((code, text), (452, FULL_TEXT), "MAIL on %s" % node.name)
            res = self.send(node, "over-%s" % node.name)
            self.assertEqual((res.stage, res.code), ("mail", 452), "%s: %r" % (node.name, res))
        for node in c.nodes:
            status, body = self.ready(node)
            self.assertEqual(status, 200, "%s /health/ready: %r" % (node.name, body))
            self.assertIn("queue full: %d messages (limit %d)" % (LIMIT, LIMIT), body)
            self.assertEqual(self.gauge(node, "hamr_queue_full"), 1)
            self.assertGreater(self.gauge(node, "hamr_queue_bytes"), 0)
            self.assertGreaterEqual(node.counters("hamr_smtp_rejects_total", "code").get("452", 0),
                                    2 if node in nodes else 0)
        self.assertEqual(c.nodes[0].queue_messages(), LIMIT, "a refused message was queued")

        c.sink.start()
        self.wait_queued(0, DRAIN_BOUND)
        for node in nodes:
            code, text = mail_reply(node.smtp_port, node.host, "limit@example.org")
            self.assertEqual(code, 250, "MAIL on %s after the drain: %r" % (node.name, text))
        for node in c.nodes:
            self.assertEqual(self.ready(node), (200, "ready\n"))
            self.assertEqual(self.gauge(node, "hamr_queue_full"), 0)
        res = self.send(nodes[-1], "after")
        self.assertEqual(res.code, 250, repr(res))


if __name__ == "__main__":
    unittest.main(verbosity=2)
