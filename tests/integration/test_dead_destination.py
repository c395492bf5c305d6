#!/usr/bin/python3
"""test_dead_destination.py - a next hop that takes no connection is suspended, not hammered.

The relayhost's port is closed. 60 messages queue up with retry_min =
retry_max = 2s, so without suspension every one of them would be tried every
two seconds: three more deferrals would follow within milliseconds. With it,
the first attempts that get no SMTP session suspend the destination
(hamr_destinations_suspended 1, a "suspended" log line) and from then on one
message is tried as a probe every retry_min (2 s here; 10 s at most): once
nothing is leased, the next three deferrals take at least two probe
intervals. Then the sink starts on that port and "hamrctl flush" lifts the
suspension at once: every message is delivered exactly once, the gauge is
back to 0.
"""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import free_port, hostport, make_message, new_test_id, wait_for  # noqa: E402

MESSAGES = 60
PROBE_S = 2.0  # retry_min: the probe interval
ROUNDS = 3


def metric(text, name):
    """metric - the value of the unlabelled series name, or 0 when absent."""
    m = re.search(r"(?m)^%s (\S+)$" % re.escape(name), text)
    return float(m.group(1)) if m else 0.0


def deferred(text):
    m = re.search(r'(?m)^hamr_deliveries_total\{outcome="deferred"\} (\S+)$', text)
    return float(m.group(1)) if m else 0.0


class DeadDestinationTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.sink_port = free_port()
        cls.http_port = free_port()
        cls.node = cls.env.node(
            relayhost_port=cls.sink_port,
            overrides={"delivery": {"retry_min": "2s", "retry_max": "2s",
                                    "max_per_destination": "1"},
                       "listen": {"http": hostport("127.0.0.1", cls.http_port)}})
        cls.node.http_port = cls.http_port
        cls.node.start()

    def test_suspended_then_flushed(self):
        tid = new_test_id("dead")
        sender, rcpt = "dead@example.org", "dest@example.com"
        for i in range(MESSAGES):
            msg = make_message(tid, sender, [rcpt], subject="dead %d" % i)
            self.assertReply(self.node.send(sender, [rcpt], msg), 250, "2.0.0")

        wait_for(lambda: metric(self.node.metrics(), "hamr_destinations_suspended") == 1,
                 30, "the dead next hop to be suspended")
        dest = "[127.0.0.1]:%d" % self.sink_port
        self.assertIn("destination %s: suspended, a probe every 2000 ms" % dest,
                      self.node.proc.log_text())
        # Nothing leased: the first attempts are all answered; from here on, probes only.
        wait_for(lambda: int(harness.field(self.node.status(), "queue_rcpts_leased", 0) or 0)
                 == 0, 30, "no recipient leased")
        d0, t0 = deferred(self.node.metrics()), time.monotonic()
        wait_for(lambda: deferred(self.node.metrics()) >= d0 + ROUNDS, 30,
                 "%d more deferrals" % ROUNDS, interval=0.02)
        took = time.monotonic() - t0
        self.assertGreaterEqual(took, (ROUNDS - 1) * PROBE_S * 0.9,
                                "%d attempts at a suspended next hop in %.2fs" % (ROUNDS, took))
        self.assertEqual(metric(self.node.metrics(), "hamr_destination_suspensions_total"), 1,
                         "a failed probe is not a new suspension")
        self.assertEqual(self.node.queue_messages(), MESSAGES, "a message left the queue")

        sink = self.env.sink(port=self.sink_port).start()
        self.node.ctl("flush")
        wait_for(lambda: len(sink.by_test_id(tid)) >= MESSAGES, 30,
                 "every message at the sink after the flush")
        self.node.wait_queue_empty()
        self.assertEqual(len(sink.by_test_id(tid)), MESSAGES, "a message delivered twice")
        self.assertEqual(metric(self.node.metrics(), "hamr_destinations_suspended"), 0)


if __name__ == "__main__":
    harness.main()
