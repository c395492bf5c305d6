#!/usr/bin/python3
"""test_dead_destination.py - a next hop that takes no connection is suspended, not hammered.

The relayhost's port is closed. 60 messages queue up with retry_min =
retry_max = 2s, so without suspension every one of them would be tried every
two seconds (about 90 attempts in the three rounds measured below). With it,
the first attempts that get no SMTP session suspend the destination for
retry_min (hamr_destinations_suspended 1, a "suspended" log line), and each
round after that is one probe of at most max_per_destination x 4 messages
(here 4). The test waits for three more suspensions (three probe rounds) and
checks that at most 3 x 4 + 4 attempts were made meanwhile. Then the sink
starts on that port and "hamrctl flush" revives the destination at once:
every message is delivered exactly once, the gauge is back to 0.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import free_port, hostport, make_message, new_test_id, wait_for  # noqa: E402

MESSAGES = 60
PROBE = 4  # max_per_destination 1: the scheduler leases up to 4 messages per next hop
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

        text = wait_for(lambda: (lambda t: t if metric(t, "hamr_destinations_suspended") == 1
                                 else None)(self.node.metrics()),
                        30, "the dead next hop to be suspended")
        dest = "[127.0.0.1]:%d" % self.sink_port
        self.assertIn("destination %s: suspended for 2000 ms" % dest, self.node.proc.log_text())
        s0, d0 = metric(text, "hamr_destination_suspensions_total"), deferred(text)
        self.assertGreaterEqual(s0, 1)

        text = wait_for(lambda: (lambda t: t if metric(t, "hamr_destination_suspensions_total")
                                 >= s0 + ROUNDS else None)(self.node.metrics()),
                        30, "%d probe rounds" % ROUNDS)
        attempts = deferred(text) - d0
        self.assertLessEqual(attempts, ROUNDS * PROBE + PROBE,
                             "%d attempts at a suspended next hop in %d probe rounds"
                             % (attempts, ROUNDS))
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
