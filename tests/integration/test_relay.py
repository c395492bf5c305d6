#!/usr/bin/python3
"""test_relay.py - mail relayed by one real hamrd to the recording sink.

Covers: a message with dot-leading lines and 8-bit text arrives byte-identical
after hamr's one Received: header, which names the queue id of the 250 reply;
swaks as a second client; one message to three recipients gives three
deliveries; an unauthorised relay attempt is refused with 554 5.7.1 and
nothing is delivered; hamrctl reports the node as leader and an empty queue
once everything is delivered.
"""

import os
import re
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import make_message, new_test_id, sha256_hex  # noqa: E402


def relay_body():
    """relay_body - a few KiB with dot-leading lines, 8-bit UTF-8 text and long lines."""
    lines = []
    for i in range(60):
        lines.append("line %02d: the quick brown fox jumps over the lazy dog" % i)
        if i % 7 == 0:
            lines.append(".")
            lines.append(".. two dots")
            lines.append(". dot space")
            lines.append(".leading dot %d" % i)
        if i % 5 == 0:
            lines.append("Grüße aus Köln, naïve café, Ελληνικά, 日本語のテキスト %d" % i)
        if i % 11 == 0:
            lines.append("x" * 900)
    lines.append("")
    lines.append("From the end: a line starting with From and a trailing dot .")
    return "\r\n".join(lines) + "\r\n"


def received_header(data):
    """received_header - the first header of data if it is Received: (with folded lines)."""
    if not data.lower().startswith(b"received:"):
        return None
    end = data.find(b"\r\n")
    while end >= 0 and data[end + 2:end + 3] in (b" ", b"\t"):
        end = data.find(b"\r\n", end + 2)
    return data[:end + 2]


class RelayTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.sink = cls.env.sink().start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port).start()

    def test_a_body_integrity_and_received_header(self):
        tid = new_test_id("relay-a")
        sender, rcpt = "alice@example.org", "bob@example.com"
        msg = make_message(tid, sender, [rcpt], subject="integrity", body=relay_body(),
                           extra_headers=["MIME-Version: 1.0",
                                          "Content-Type: text/plain; charset=utf-8",
                                          "Content-Transfer-Encoding: 8bit"])
        self.assertGreater(len(msg), 4096)
        res = self.node.send(sender, [rcpt], msg, mail_options=["BODY=8BITMIME"])
        self.assertReply(res, 250, "2.0.0")
        self.assertIsNotNone(res.queue_id, "no queue id in %r" % res.text)
        self.assertEqual(res.body, msg, "the message was already CRLF-normalised")

        (rec,) = self.sink.wait_test_id(tid)
        self.assertEqual(rec["mail_from"], sender)
        self.assertEqual(rec["rcpt"], rcpt)
        delivered = self.sink.read_file(rec)
        received = received_header(delivered)
        self.assertIsNotNone(received, "delivered message does not start with Received:: %r"
                             % delivered[:200])
        self.assertEqual(delivered[len(received):], msg, "body changed in transit")
        self.assertEqual(rec["sha256_after_received"], sha256_hex(msg))
        self.assertEqual(rec["sha256"], sha256_hex(delivered))
        self.assertIn(res.queue_id.encode(), received,
                      "Received: header %r lacks queue id %s" % (received, res.queue_id))
        self.assertRegex(received.decode("utf-8", "replace"),
                         r"(?s)by \S+ .*id %s" % re.escape(res.queue_id))
        n_received = len(re.findall(rb"(?im)^received:", delivered.split(b"\r\n\r\n", 1)[0]))
        self.assertEqual(n_received, 1, "hamr must add exactly one Received: header")

    @unittest.skipUnless(shutil.which("swaks"), "swaks is not installed")
    def test_b_swaks(self):
        tid = new_test_id("relay-b")
        argv = ["swaks", "--server", "127.0.0.1:%d" % self.node.smtp_port,
                "--to", "a@example.com", "--from", "b@example.org", "--helo", "swaks.test",
                "--header", "X-Test-Id: %s" % tid, "--body", "sent by swaks\n.dot line\n",
                "--timeout", "30"]
        out = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        text = out.stdout.decode("utf-8", "replace")
        self.assertEqual(out.returncode, 0, "swaks failed:\n%s%s" % (text, out.stderr.decode()))
        m = re.search(r"<-  250 2\.0\.0 Ok: queued as (\S+)", text)
        self.assertIsNotNone(m, "no 250 queued-as in swaks transcript:\n%s" % text)
        (rec,) = self.sink.wait_test_id(tid)
        self.assertEqual(rec["mail_from"], "b@example.org")
        self.assertEqual(rec["rcpt"], "a@example.com")
        delivered = self.sink.read_file(rec)
        self.assertIn(m.group(1).encode(), received_header(delivered) or b"")
        self.assertIn(b"\r\n.dot line\r\n", delivered, "dot-leading line not un-stuffed once")

    def test_c_three_recipients(self):
        tid = new_test_id("relay-c")
        rcpts = ["r1@example.com", "r2@example.com", "r3@example.com"]
        msg = make_message(tid, "multi@example.org", rcpts)
        res = self.node.send("multi@example.org", rcpts, msg)
        self.assertReply(res, 250, "2.0.0")
        self.assertEqual([c for c, _ in res.rcpt_replies], [250, 250, 250])
        recs = self.sink.wait_test_id(tid, count=3)
        self.assertEqual(sorted(r["rcpt"] for r in recs), rcpts)
        for r in recs:
            self.assertEqual(r["sha256_after_received"], sha256_hex(msg))
        self.node.wait_queue_empty()
        self.assertEqual(len(self.sink.by_test_id(tid)), 3, "a recipient was delivered twice")

    def test_e_hamrctl_status_and_empty_queue(self):
        status = self.node.status()
        self.assertEqual(harness.field(status, "state"), "leader", status)
        self.assertEqual(int(harness.field(status, "id", 0) or 0), self.node.id, status)
        tid = new_test_id("relay-e")
        msg = make_message(tid, "ctl@example.org", ["ctl@example.com"])
        self.assertReply(self.node.send("ctl@example.org", ["ctl@example.com"], msg), 250)
        self.sink.wait_test_id(tid)
        self.node.wait_queue_empty()
        self.assertEqual(self.node.queue(), [])
        self.assertEqual(self.node.queue_messages(), 0)


class RelayDeniedTest(harness.HamrTestCase):
    """A node whose relay_networks exclude 127.0.0.1: only example.com is relayed."""

    @classmethod
    def setUpEnv(cls):
        cls.sink = cls.env.sink().start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port,
                                overrides={"smtpd": {"relay_networks": "10.0.0.0/8"}}).start()

    def test_d_relay_denied(self):
        tid = new_test_id("relay-d")
        victim = "x@victim.example"
        res = self.node.send("spammer@example.org", [victim],
                             make_message(tid, "spammer@example.org", [victim]))
        self.assertEqual(res.stage, "rcpt", res)
        self.assertReply(res, 554, "5.7.1")
        self.assertIn("Relay access denied", res.text)

        # A message to the relay domain passes; once it is delivered and the
        # queue is empty, nothing addressed to the victim can still be on its way.
        ok = new_test_id("relay-d-ok")
        res = self.node.send("someone@example.org", ["ok@example.com"],
                             make_message(ok, "someone@example.org", ["ok@example.com"]))
        self.assertReply(res, 250, "2.0.0")
        self.sink.wait_test_id(ok)
        self.node.wait_queue_empty()
        self.assertEqual(self.sink.by_test_id(tid), [])
        self.assertEqual([r for r in self.sink.records() if "victim" in r["rcpt"]], [])


if __name__ == "__main__":
    harness.main()
