#!/usr/bin/python3
"""test_bounce.py - a permanent failure downstream makes exactly one DSN; never to <>.

The sink answers RCPT for nouser@... with 550 5.1.1. A message from a normal
sender to that recipient (and to one good recipient) yields one RFC 3464
multipart/report DSN from <> to the sender, naming the recipient and 5.1.1,
while the good recipient gets the message once. A message from the null
sender to the same recipient yields no DSN at all.
"""

import email
import email.policy
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import make_message, new_test_id, wait_for  # noqa: E402

REJECTED = "nouser@example.com"


class BounceTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.sink = cls.env.sink(reject_rcpt=r"^nouser@").start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port).start()

    def dsns_to(self, addr):
        return [r for r in self.sink.records() if r["mail_from"] == "" and r["rcpt"] == addr]

    def test_a_one_dsn_to_the_sender(self):
        self.node.wait_queue_empty()
        tid = new_test_id("bounce")
        sender = "alice@example.org"
        rcpts = [REJECTED, "fine@example.com"]
        res = self.node.send(sender, rcpts, make_message(tid, sender, rcpts))
        self.assertReply(res, 250, "2.0.0")

        dsn_rec = wait_for(lambda: self.dsns_to(sender), 40, "a DSN to %s" % sender)[0]
        self.node.wait_queue_empty()
        self.assertEqual(len(self.dsns_to(sender)), 1, "more than one DSN")

        data = self.sink.read_file(dsn_rec)
        dsn = email.message_from_bytes(data, policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report", data[:600])
        self.assertEqual(dsn.get_param("report-type"), "delivery-status", data[:600])
        types = [p.get_content_type() for p in dsn.walk()]
        self.assertIn("message/delivery-status", types)
        self.assertIn(REJECTED.encode(), data)
        self.assertIn(b"5.1.1", data)
        self.assertRegex(data, rb"(?im)^Action:\s*failed")
        self.assertRegex(data, rb"(?im)^Status:\s*5\.1\.1")
        self.assertRegex(data, rb"(?im)^Final-Recipient:\s*rfc822;\s*" + re.escape(REJECTED.encode()))

        good = [r for r in self.sink.by_test_id(tid)]
        self.assertEqual([r["rcpt"] for r in good], ["fine@example.com"],
                         "the good recipient must get the message exactly once")
        self.assertEqual([r for r in self.sink.records() if r["rcpt"] == REJECTED], [])

    def test_b_no_dsn_for_null_sender(self):
        self.node.wait_queue_empty()
        before = len(self.sink.records())
        rejects_before = self.sink.events("reject_rcpt")
        tid = new_test_id("bounce-null")
        res = self.node.send("", [REJECTED], make_message(tid, "", [REJECTED]))
        self.assertReply(res, 250, "2.0.0")
        # The attempt must really have happened and failed, or the check below proves nothing.
        wait_for(lambda: self.sink.events("reject_rcpt") > rejects_before, 30,
                 "hamr to try the null-sender message and get 550")
        self.node.wait_queue_empty()
        self.assertEqual(self.sink.records()[before:], [], "something was sent for a bounced "
                         "null-sender message")


if __name__ == "__main__":
    harness.main()
