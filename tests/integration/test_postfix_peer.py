#!/usr/bin/python3
"""test_postfix_peer.py - a real Postfix (tests/integration/postfixlab.py) as hamr's next hop.

Covers: one hamrd relays a message (dot-leading lines, 8-bit UTF-8, long
lines) to the Postfix lab, which delivers it to a maildir byte-exact: the
message as sent after Return-Path:, X-Original-To:, Delivered-To:, Postfix's
Received: and hamr's Received:, the envelope sender and recipient as hamr
was given them, exactly once, and hamr's queue empty afterwards.

And the lab itself, spoken to directly with smtplib, so that the tests that
use it can trust it: it advertises DSN and SMTPUTF8 when on, and neither
when off (then it refuses "MAIL ... SMTPUTF8" and NOTIFY); with NOTIFY=SUCCESS
Postfix sends a success DSN (message/delivery-status, "Action: delivered",
the ENVID and ORCPT given) to the relayhost the lab was given, a recording
sink; without NOTIFY it sends none; a message it relays to that relayhost
and has refused there comes back as a failure DSN ("Action: failed",
5.1.1); an SMTPUTF8 transaction to a UTF-8
mailbox name is delivered. Two lab instances run side by side, and each
stops cleanly without leaving a process behind.
"""

import email
import email.policy
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import postfixlab  # noqa: E402
from harness import make_message, new_test_id, wait_for  # noqa: E402
from test_relay import relay_body  # noqa: E402


def header_names(block):
    """header_names - the names of the headers in block (bytes, CRLF), folded lines joined."""
    return [line.split(b":", 1)[0].decode() for line in block.split(b"\r\n")
            if line and line[:1] not in (b" ", b"\t")]


class PostfixPeerTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.labs = []
        try:
            cls._start_all()
        except BaseException:
            for lab in cls.labs:  # before the harness removes their directory
                sys.stderr.write("\n" + lab.diagnostics(100) + "\n")
                lab.stop()
            raise

    @classmethod
    def _start_all(cls):
        # Postfix's own mail (its DSNs), and what it relays, goes to the sink,
        # which refuses refused@... with 550 5.1.1.
        cls.sink = cls.env.sink(reject_rcpt=r"^refused@").start()
        cls.pf = postfixlab.PostfixLab(cls.env, relayhost_port=cls.sink.port)
        cls.labs.append(cls.pf)
        cls.pf.start()
        cls.pf_off = postfixlab.PostfixLab(cls.env, relayhost_port=cls.sink.port,
                                           smtputf8=False, dsn=False, name="postfix-off")
        cls.labs.append(cls.pf_off)
        cls.pf_off.start()
        cls.node = cls.env.node(relayhost_port=cls.pf.port,
                                overrides={"smtpd": {"relay_domains": "example.com, pf.test"}})
        cls.node.start()

    def tearDown(self):
        if self._has_failed():
            for lab in self.labs:
                sys.stderr.write("\n" + lab.diagnostics(100) + "\n")
        super().tearDown()

    @classmethod
    def tearDownClass(cls):
        problems = []
        for lab in getattr(cls, "labs", []):
            killed = lab.stop()
            if killed:
                problems.append("%s: processes left after postfix stop, killed: %r"
                                % (lab.dir, killed))
            if lab.running():
                problems.append("%s: still running after stop" % lab.dir)
        super().tearDownClass()
        if problems:
            raise AssertionError("; ".join(problems))

    # --- helpers ------------------------------------------------------------

    def wait_removed(self, lab, queue_id, timeout=30):
        """wait_removed - until Postfix logged "QUEUE_ID: removed" (done with the message)."""
        pat = re.compile(r"\]: %s: removed$" % re.escape(queue_id), re.M)
        wait_for(lambda: pat.search(lab.log_text()), timeout,
                 "Postfix to remove %s" % queue_id, interval=0.1)

    def send_direct(self, lab, sender, rcpt, msg, mail_options=(), rcpt_options=()):
        """send_direct - one transaction straight to lab with smtplib; Postfix's queue id."""
        import smtplib
        with smtplib.SMTP(lab.host, lab.port, local_hostname="client.test", timeout=30) as s:
            self.assertEqual(s.ehlo()[0], 250)
            code, text = s.mail(sender, list(mail_options))
            self.assertEqual(code, 250, text)
            code, text = s.rcpt(rcpt, list(rcpt_options))
            self.assertEqual(code, 250, text)
            code, text = s.data(msg)
            self.assertEqual(code, 250, text)
        m = re.search(r"queued as (\w+)", text.decode())
        self.assertIsNotNone(m, text)
        return m.group(1)

    def dsn_records(self, envid):
        """dsn_records - the sink's records of messages from <> naming Original-Envelope-Id envid."""
        out = []
        for rec in self.sink.records():
            if rec["mail_from"] != "":
                continue
            data = self.sink.read_file(rec)
            if re.search(rb"(?mi)^Original-Envelope-Id: %s\r?$" % re.escape(envid.encode()), data):
                out.append((rec, data))
        return out

    # --- the lab on its own -------------------------------------------------

    def test_a_ehlo_on(self):
        kw = self.pf.ehlo_keywords()
        for k in ("DSN", "SMTPUTF8", "8BITMIME", "ENHANCEDSTATUSCODES"):
            self.assertIn(k, kw)

    def test_b_ehlo_off(self):
        kw = self.pf_off.ehlo_keywords()
        self.assertNotIn("DSN", kw)
        self.assertNotIn("SMTPUTF8", kw)
        self.assertIn("8BITMIME", kw)  # only those two are taken away
        conn = harness.RawSMTP(self.pf_off.port)
        try:
            self.assertEqual(conn.greeting[0], 220)
            self.assertEqual(conn.cmd("EHLO client.test")[0], 250)
            self.assertEqual(conn.cmd("MAIL FROM:<a@client.test> SMTPUTF8")[0], 555)
            self.assertEqual(conn.cmd("MAIL FROM:<a@client.test> ENVID=x")[0], 501)
            self.assertEqual(conn.cmd("MAIL FROM:<a@client.test>")[0], 250)
            code, text = conn.cmd("RCPT TO:<x@pf.test> NOTIFY=SUCCESS")
            self.assertEqual(code, 501, text)
            self.assertIn("DSN support is disabled", text)
            self.assertEqual(conn.cmd("RCPT TO:<x@pf.test>")[0], 250)
            conn.cmd("QUIT")
        finally:
            conn.close()

    def test_c_success_dsn_to_relayhost(self):
        tid = new_test_id("pf-dsn")
        envid = "env-" + tid
        sender, rcpt = "dsn-sender@client.test", "dsn@pf.test"
        msg = make_message(tid, sender, [rcpt], subject="success DSN")
        qid = self.send_direct(self.pf, sender, rcpt, msg,
                               mail_options=["ENVID=" + envid, "RET=HDRS"],
                               rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;" + rcpt])
        (d,) = self.pf.wait_delivered(tid)
        self.assertEqual(d.delivered_to, rcpt)
        self.assertEqual(d.crlf()[-len(msg):], msg)

        (rec, data), = wait_for(lambda: self.dsn_records(envid), 30,
                                "Postfix's success DSN for %s at the sink" % envid, interval=0.1)
        self.assertEqual(rec["rcpt"], sender)
        report = email.message_from_bytes(data, policy=email.policy.compat32)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        parts = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
        self.assertEqual(len(parts), 1, data.decode(errors="replace"))
        per_message, per_rcpt = parts[0].get_payload()[0], parts[0].get_payload()[1]
        self.assertEqual(per_message["Original-Envelope-Id"], envid)
        self.assertEqual(per_rcpt["Action"], "delivered")
        self.assertEqual(per_rcpt["Status"], "2.0.0")
        self.assertEqual(per_rcpt["Final-Recipient"].replace(" ", ""), "rfc822;" + rcpt)
        self.assertEqual(per_rcpt["Original-Recipient"].replace(" ", ""), "rfc822;" + rcpt)
        # RET=HDRS: the original headers, not the body.
        self.assertIn(("X-Test-Id: %s" % tid).encode(), data)
        self.assertNotIn(b"This is test message", data)
        self.assertRegex(self.pf.log_text(),
                         r"\]: %s: sender delivery status notification: \w+" % qid)

        # The same without NOTIFY: delivered, and no notice at all (Postfix logs
        # the notification before it removes the queue file).
        tid2 = new_test_id("pf-nodsn")
        qid2 = self.send_direct(self.pf, sender, rcpt,
                                make_message(tid2, sender, [rcpt], subject="no DSN"),
                                mail_options=["ENVID=env-" + tid2])
        self.pf.wait_delivered(tid2)
        self.wait_removed(self.pf, qid2)
        self.assertNotRegex(self.pf.log_text(), r"\]: %s: sender delivery status" % qid2)
        self.assertEqual(self.dsn_records("env-" + tid2), [])

    def test_d_failure_dsn_to_relayhost(self):
        """Relayed by the lab to its relayhost, refused there: a failure DSN comes back."""
        tid = new_test_id("pf-fail")
        envid = "env-" + tid
        sender, rcpt = "fail-sender@client.test", "refused@elsewhere.test"
        msg = make_message(tid, sender, [rcpt], subject="failure DSN")
        qid = self.send_direct(self.pf, sender, rcpt, msg, mail_options=["ENVID=" + envid])
        (rec, data), = wait_for(lambda: self.dsn_records(envid), 30,
                                "Postfix's failure DSN for %s at the sink" % envid, interval=0.1)
        self.assertEqual(rec["rcpt"], sender)
        report = email.message_from_bytes(data, policy=email.policy.compat32)
        (status,) = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
        per_rcpt = status.get_payload()[1]
        self.assertEqual(per_rcpt["Action"], "failed")
        self.assertEqual(per_rcpt["Status"], "5.1.1")
        self.assertEqual(per_rcpt["Final-Recipient"].replace(" ", ""), "rfc822;" + rcpt)
        self.assertRegex(self.pf.log_text(), r"\]: %s: to=<%s>, relay=127\.0\.0\.1\[127\.0\.0\.1\]"
                         r":%d, .*status=bounced" % (qid, re.escape(rcpt), self.sink.port))
        self.assertEqual(self.sink.events("reject_rcpt"), 1)

    def test_e_smtputf8_direct(self):
        tid = new_test_id("pf-utf8")
        sender, rcpt = "jörg@client.test", "grüße@pf.test"
        msg = make_message(tid, sender, [rcpt], subject="Grüße",
                           extra_headers=["MIME-Version: 1.0",
                                          "Content-Type: text/plain; charset=utf-8"],
                           body="Grüße aus Köln\r\n")
        self.send_direct(self.pf, sender, rcpt, msg, mail_options=["SMTPUTF8"])
        (d,) = self.pf.wait_delivered(tid)
        self.assertEqual(d.mailbox, "catchall")
        self.assertEqual(d.delivered_to, rcpt)
        self.assertEqual(d.return_path, "<%s>" % sender)
        self.assertEqual(d.crlf()[-len(msg):], msg)

    # --- hamr to Postfix ----------------------------------------------------

    def test_f_relay_through_hamr(self):
        tid = new_test_id("pf-relay")
        sender, rcpt = "alice@example.org", "bob@pf.test"
        msg = make_message(tid, sender, [rcpt], subject="via hamr", body=relay_body(),
                           extra_headers=["MIME-Version: 1.0",
                                          "Content-Type: text/plain; charset=utf-8",
                                          "Content-Transfer-Encoding: 8bit"])
        res = self.node.send(sender, [rcpt], msg, mail_options=["BODY=8BITMIME"])
        self.assertReply(res, 250, "2.0.0")
        (d,) = self.pf.wait_delivered(tid)
        self.node.wait_queue_empty()

        data = d.crlf()
        self.assertTrue(data.endswith(msg), "the message changed on its way:\n%r"
                        % data[:2000])
        prefix = data[:-len(msg)]
        self.assertEqual(header_names(prefix),
                         ["Return-Path", "X-Original-To", "Delivered-To", "Received", "Received"],
                         prefix.decode(errors="replace"))
        self.assertEqual(d.return_path, "<%s>" % sender)
        self.assertEqual(d.delivered_to, rcpt)
        self.assertEqual(d.x_original_to, rcpt)
        pf_received, hamr_received = d.all("Received")[:2]
        self.assertIn("by pf-lab.test (Postfix)", pf_received)
        self.assertIn("for <%s>" % rcpt, pf_received)
        self.assertIn(self.node.name, hamr_received)
        self.assertIn(res.queue_id, hamr_received)

        qids = self.pf.queue_ids_of("%s@client.test" % tid)
        self.assertEqual(len(qids), 1, self.pf.log_tail())
        self.wait_removed(self.pf, qids[0])
        self.assertRegex(self.pf.log_text(), r"postfix/virtual\[\d+\]: %s: to=<%s>, .*"
                         r"status=sent \(delivered to maildir\)" % (qids[0], re.escape(rcpt)))
        self.assertEqual(len([x for x in self.pf.delivered() if x.test_id == tid]), 1)


if __name__ == "__main__":
    harness.main()
