#!/usr/bin/python3
"""test_retry.py - a temporary failure downstream is retried until delivered, once.

The sink answers the first two DATA commands with 451. The message gets its
250 at once; "hamrctl queue" shows it deferred with attempts >= 1 and the 451
as last error; it is delivered after the retries (retry_min 1s) and the sink
records exactly one delivery.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import field, make_message, new_test_id, sha256_hex, wait_for  # noqa: E402


def retry_deferred_rcpt(entries, queue_id):
    """retry_deferred_rcpt - the first recipient of queue_id once it has failed an attempt."""
    for e in entries:
        if field(e, "queue_id") != queue_id:
            continue
        for r in field(e, "rcpts", []) or []:
            if int(field(r, "attempts", 0) or 0) >= 1 and "451" in (field(r, "last_error", "") or ""):
                return r
    return None


class RetryTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.sink = cls.env.sink(tempfail_first=2).start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port).start()

    def test_tempfail_then_delivered_once(self):
        tid = new_test_id("retry")
        sender, rcpt = "retry@example.org", "dest@example.com"
        msg = make_message(tid, sender, [rcpt])
        res = self.node.send(sender, [rcpt], msg, retries_4xx=0)
        self.assertReply(res, 250, "2.0.0")
        self.assertIsNotNone(res.queue_id)

        rcpt_state = wait_for(lambda: retry_deferred_rcpt(self.node.queue(), res.queue_id), 20,
                              "%s to show as deferred with a 451 in hamrctl queue" % res.queue_id)
        self.assertEqual(field(rcpt_state, "addr"), rcpt)
        self.assertNotEqual(field(rcpt_state, "state"), "delivered")

        (rec,) = self.sink.wait_test_id(tid, timeout=40)
        self.assertEqual(rec["sha256_after_received"], sha256_hex(msg))
        self.node.wait_queue_empty()
        self.assertEqual(len(self.sink.by_test_id(tid)), 1, "delivered more than once")
        self.assertEqual(self.sink.events("tempfail_data"), 2, "sink refused DATA a different "
                         "number of times than configured")
        self.assertEqual(self.sink.events("delivered"), 1)


if __name__ == "__main__":
    harness.main()
