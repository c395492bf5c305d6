#!/usr/bin/python3
"""test_smtp_hostile.py - raw-socket dialogues from SECURITY.md section 2 against a real hamrd.

The node relays for no client network (relay_networks = 10.0.0.0/8, so the
test client 127.0.0.1 is an outsider) and accepts mail for example.com only.
Each case checks the replies owed and then that the sink got nothing extra:
a barrier message is sent, and once it has arrived and the queue is empty,
the only new deliveries may be the barrier (and any message the case itself
legitimately had accepted). That also proves the process is still alive and
serving other sessions.

Cases: S1 bare-LF/bare-CR smuggling, S5 early talker and body pipelined
before 354, S6 overlong command lines (the tail is never run), S8 SIZE over
the limit, S12 open-relay forms, S13 too many Received: headers, S19 HTTP
and other non-SMTP commands.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import RawSMTP, make_message, new_test_id  # noqa: E402


class HostileTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        smtpd = {"relay_networks": "10.0.0.0/8"}
        # Pregreet detection (S5) needs the greeting delayed; use the setting if hamrd has it.
        if harness.config_key_supported("smtpd", "greet_delay", "300ms"):
            smtpd["greet_delay"] = "300ms"
        cls.sink = cls.env.sink().start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port, overrides={"smtpd": smtpd}).start()

    def connect(self, **kw):
        conn = RawSMTP(self.node.smtp_port, **kw)
        self.addCleanup(conn.close)
        return conn

    def start_tx(self, conn, sender, rcpt):
        """start_tx - EHLO, MAIL, RCPT, DATA; each must succeed."""
        self.assertEqual(conn.greeting[0], 220, conn.greeting)
        self.assertEqual(conn.cmd("EHLO client.test")[0], 250)
        self.assertReply(conn.cmd("MAIL FROM:<%s>" % sender), 250)
        self.assertReply(conn.cmd("RCPT TO:<%s>" % rcpt), 250)
        self.assertReply(conn.cmd("DATA"), 354)

    def nothing_extra(self, allowed=()):
        return harness.nothing_extra(self, self.node, self.sink, allowed)

    def test_s1_smuggling(self):
        forms = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"]
        for form in forms:
            with self.subTest(form=form), self.nothing_extra():
                tid = new_test_id("s1")
                conn = self.connect()
                self.start_tx(conn, "s1@example.org", "s1@example.com")
                conn.send(b"From: <s1@example.org>\r\nX-Test-Id: " + tid.encode() +
                          b"\r\nSubject: s1\r\n\r\nhello" + form +
                          b"MAIL FROM:<smuggled@example.org>\r\n"
                          b"RCPT TO:<victim@example.com>\r\n"
                          b"DATA\r\n"
                          b"X-Test-Id: " + tid.encode() + b"-smuggled\r\n\r\n"
                          b"smuggled body\r\n.\r\n")
                code, text = conn.reply()
                self.assertEqual(code, 550, "fake terminator %r: %s" % (form, text))
                self.assertIn("5.5.2", text)
                self.assertReply(conn.cmd("QUIT"), 221)

    def test_s5_early_talker(self):
        with self.nothing_extra():
            conn = self.connect(read_greeting=False)
            conn.send("EHLO early.test\r\nMAIL FROM:<early@example.org>\r\n")
            code, text = conn.reply()
            # Input that arrives before the 220 can only be seen if the server
            # waits a moment before greeting (smtpd_server_set_greet_delay).
            self.assertEqual(code, 554, "pregreet input must get 554 5.5.0 instead of the "
                             "greeting (is the greeting delayed?); got %r" % text)
            self.assertIn("5.5.0", text)
            rest = conn.replies_until_close()
            self.assertNotIn(250, [c for c, _ in rest], rest)

    def test_s5_body_before_354(self):
        with self.nothing_extra():
            tid = new_test_id("s5")
            conn = self.connect()
            self.assertEqual(conn.cmd("EHLO client.test")[0], 250)
            self.assertReply(conn.cmd("MAIL FROM:<s5@example.org>"), 250)
            self.assertReply(conn.cmd("RCPT TO:<s5@example.com>"), 250)
            conn.send("DATA\r\nX-Test-Id: %s\r\nSubject: desync\r\n\r\nbody\r\n.\r\n" % tid)
            replies = conn.replies_until_close()
            codes = [c for c, _ in replies]
            self.assertIn(554, codes, replies)
            self.assertTrue(any("5.5.0" in t for c, t in replies if c == 554), replies)
            self.assertNotIn(250, codes, "content sent before 354 was accepted: %r" % replies)

    def test_s6_overlong_lines(self):
        tid = new_test_id("s6")
        with self.nothing_extra(allowed={tid}):
            conn = self.connect()
            self.assertEqual(conn.cmd("EHLO client.test")[0], 250)
            self.assertReply(conn.cmd("MAIL FROM:<" + "a" * 10000 + "@x.example>"), 500, "5.5.2")
            self.assertReply(conn.cmd("EHLO " + "h" * 3000), 500, "5.5.2")
            # Up to 2048 octets with CRLF is a command line (RFC 3461 raises
            # RFC 5321's 512, as Postfix's line_length_limit): this one gets
            # the path's syntax error; one octet more is too long.
            line = "MAIL FROM:<" + "a" * (2048 - 14) + ">"
            self.assertEqual(len(line) + 2, 2048)
            self.assertReply(conn.cmd(line), 501, "5.1.7")
            self.assertReply(conn.cmd("MAIL FROM:<a" + line[11:]), 500, "5.5.2")
            self.assertReply(conn.cmd("MAIL FROM:<s6@example.org>"), 250)
            # The tail of an overlong line must never run as a command: if RSET
            # ran, RCPT would get 503 (or the replies would be out of step).
            self.assertReply(conn.cmd("A" * 3000 + " RSET"), 500, "5.5.2")
            conn.send(b"B" * (1024 * 1024))
            self.assertReply(conn.cmd(" RSET"), 500, "5.5.2")
            self.assertReply(conn.cmd("RCPT TO:<s6@example.com>"), 250)
            self.assertReply(conn.cmd("DATA"), 354)
            conn.send(make_message(tid, "s6@example.org", ["s6@example.com"]) + b".\r\n")
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.cmd("QUIT"), 221)
        self.assertEqual(len(self.sink.by_test_id(tid)), 1)

    def test_s8_size_over_limit(self):
        with self.nothing_extra():
            conn = self.connect()
            self.assertEqual(conn.cmd("EHLO client.test")[0], 250)
            self.assertReply(conn.cmd("MAIL FROM:<s8@example.org> SIZE=999999999"), 552, "5.3.4")
            self.assertReply(conn.cmd("RCPT TO:<s8@example.com>"), 503, "5.5.1")
            self.assertReply(conn.cmd("MAIL FROM:<s8@example.org> SIZE=1000"), 250)
            self.assertReply(conn.cmd("RSET"), 250)
            self.assertReply(conn.cmd("QUIT"), 221)

    def test_s12_relay_forms(self):
        denied = [
            "x@victim.example",
            "x%victim.example@example.com",
            "victim.example!x@example.com",
            '"x@victim.example"@example.com',
            '"x%victim.example"@example.com',
            "x%victim.example@[127.0.0.1]",
            "x@[127.0.0.1]",
            "@example.com:x@victim.example",
            "@[127.0.0.1]:x@victim.example",
        ]
        refused = ["victim.example!x", '"x%victim.example"', "x@victim.example@example.com"]
        with self.nothing_extra():
            # One session per sender: every refusal counts towards max_errors (20).
            for sender in ["", "someone@example.com", "someone@example.org"]:
                conn = self.connect()
                self.assertEqual(conn.cmd("EHLO client.test")[0], 250)
                self.assertReply(conn.cmd("MAIL FROM:<%s>" % sender), 250)
                for rcpt in denied:
                    with self.subTest(sender=sender, rcpt=rcpt):
                        self.assertReply(conn.cmd("RCPT TO:<%s>" % rcpt), 554, "5.7.1")
                for rcpt in refused:
                    with self.subTest(sender=sender, rcpt=rcpt):
                        code, text = conn.cmd("RCPT TO:<%s>" % rcpt)
                        self.assertIn(code, (501, 550, 553, 554), text)
                self.assertReply(conn.cmd("DATA"), 503, "5.5.1")
                self.assertReply(conn.cmd("QUIT"), 221)

    def test_s13_too_many_hops(self):
        tid = new_test_id("s13")
        with self.nothing_extra():
            conn = self.connect()
            self.start_tx(conn, "s13@example.org", "s13@example.com")
            hops = b"".join(b"Received: from hop%d.example by hop%d.example; "
                            b"Thu, 1 Jan 2025 00:00:00 +0000\r\n" % (i, i + 1) for i in range(60))
            conn.send(hops + make_message(tid, "s13@example.org", ["s13@example.com"]) + b".\r\n")
            self.assertReply(conn.reply(), 554, "5.4.6")
            self.assertReply(conn.cmd("QUIT"), 221)
        self.assertEqual(self.sink.by_test_id(tid), [])

    def test_s19_non_smtp(self):
        for line in ["GET / HTTP/1.1", "POST /login HTTP/1.0", "CONNECT mx.example:25 HTTP/1.1"]:
            with self.subTest(line=line), self.nothing_extra():
                conn = self.connect()
                conn.send(line + "\r\nHost: relay.test\r\n\r\n")
                replies = conn.replies_until_close()
                self.assertTrue(replies, "no reply to %r" % line)
                self.assertEqual(replies[0][0], 221, replies)
                self.assertIn("2.7.0", replies[0][1])
                self.assertEqual(len(replies), 1, "commands after %r were run: %r" % (line, replies))


if __name__ == "__main__":
    harness.main()
