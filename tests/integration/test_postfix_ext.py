#!/usr/bin/python3
"""test_postfix_ext.py - SMTPUTF8 and DSN through hamr to a real Postfix, with them on and off.

Two private Postfix instances (postfixlab.py) are hamr's next hops: pf.test
offers DSN and SMTPUTF8, off.test offers neither. Both send their own mail
(their notices) to a recording sink, which is also hamr's relayhost, so
every notice, hamr's or Postfix's, ends there.

Covered: NOTIFY=SUCCESS with ENVID and ORCPT goes on to the Postfix that
offers DSN, which then sends the "delivered" notice itself (with the ENVID
and ORCPT the client gave hamr), and hamr sends none; to the Postfix without
DSN hamr passes nothing on and sends one "relayed" notice of its own. A
UTF-8 envelope reaches the SMTPUTF8 Postfix, which delivers it to the UTF-8
mailbox; the Postfix without SMTPUTF8 gets nothing, and the sender gets
hamr's 5.6.7 bounce.
"""

import os
import re
import smtplib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import postfixlab  # noqa: E402
from harness import make_message, new_test_id, wait_for  # noqa: E402

SENDER = "alice@example.org"


class PostfixExtTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.labs = []
        try:
            cls.sink = cls.env.sink().start()
            cls.pf = postfixlab.PostfixLab(cls.env, relayhost_port=cls.sink.port)
            cls.labs.append(cls.pf)
            cls.pf.start()
            cls.off = postfixlab.PostfixLab(cls.env, relayhost_port=cls.sink.port,
                                            smtputf8=False, dsn=False, domain="off.test",
                                            name="postfix-off")
            cls.labs.append(cls.off)
            cls.off.start()
            transport = {"pf.test": "[127.0.0.1]:%d" % cls.pf.port,
                         "off.test": "[127.0.0.1]:%d" % cls.off.port}
            cls.node = cls.env.node(relayhost_port=cls.sink.port,
                                    overrides={"transport": transport}).start()
            wait_for(lambda: "dsn" in cls.ehlo(), 30, "hamr to offer DSN (cluster level 5)")
        except BaseException:
            for lab in cls.labs:
                sys.stderr.write("\n" + lab.diagnostics(100) + "\n")
                lab.stop()
            raise

    @classmethod
    def ehlo(cls):
        with smtplib.SMTP("127.0.0.1", cls.node.smtp_port, timeout=10) as s:
            s.ehlo("client.test")
            return s.esmtp_features

    @classmethod
    def tearDownClass(cls):
        for lab in getattr(cls, "labs", []):
            lab.stop()
        super().tearDownClass()

    def tearDown(self):
        if self._has_failed():
            for lab in self.labs:
                sys.stderr.write("\n" + lab.diagnostics(100) + "\n")
        super().tearDown()

    def send(self, sender, rcpt, data, mail_options=(), rcpt_options=()):
        with smtplib.SMTP("127.0.0.1", self.node.smtp_port, local_hostname="client.test",
                          timeout=30) as s:
            s.ehlo()
            code, text = s.mail(sender, list(mail_options))
            self.assertEqual(code, 250, text)
            code, text = s.rcpt(rcpt, list(rcpt_options))
            self.assertEqual(code, 250, text)
            code, text = s.data(data)
            self.assertEqual(code, 250, text)

    def notices(self, envid_or_tid):
        """notices - the sink's messages from <> that name envid_or_tid, as bytes."""
        out = []
        for rec in self.sink.records():
            if rec["mail_from"] == "":
                data = self.sink.read_file(rec)
                if envid_or_tid.encode() in data:
                    out.append(data)
        return out

    def test_a_notify_passed_on(self):
        tid = new_test_id("pf-dsn")
        envid = "env-" + tid
        self.send(SENDER, "carol@pf.test", make_message(tid, SENDER, ["carol@pf.test"]),
                  ["ENVID=" + envid, "RET=HDRS"],
                  ["NOTIFY=SUCCESS", "ORCPT=rfc822;Carol+2Bx@pf.test"])
        self.pf.wait_delivered(tid, 1, 30)
        # Postfix's notice: it was given NOTIFY, the ENVID and the ORCPT.
        wait_for(lambda: self.notices(envid), 30, "Postfix's delivered notice")
        self.node.wait_queue_empty()
        notes = self.notices(envid)
        self.assertEqual(len(notes), 1, "one notice, Postfix's, not hamr's too")
        self.assertRegex(notes[0], rb"(?mi)^Action: delivered\r?$")
        self.assertRegex(notes[0], rb"(?mi)^Original-Recipient: rfc822; ?Carol\+x@pf\.test\r?$")
        self.assertNotIn(b"Action: relayed", notes[0])

    def test_b_relayed_without_dsn(self):
        tid = new_test_id("off-dsn")
        envid = "env-" + tid
        self.send(SENDER, "dave@off.test", make_message(tid, SENDER, ["dave@off.test"]),
                  ["ENVID=" + envid], ["NOTIFY=SUCCESS"])
        self.off.wait_delivered(tid, 1, 30)
        wait_for(lambda: self.notices(envid), 30, "hamr's relayed notice")
        self.node.wait_queue_empty()
        notes = self.notices(envid)
        self.assertEqual(len(notes), 1)
        self.assertRegex(notes[0], rb"(?m)^Action: relayed\r$")
        self.assertRegex(notes[0], rb"(?m)^Reporting-MTA: dns; node1\.relay\.test\r$")

    def test_c_smtputf8_delivered(self):
        tid = new_test_id("pf-utf8")
        rcpt = "gr\u00fc\u00dfe@pf.test"
        sender = "\u00e9l\u00e8ve@example.org"
        self.send(sender, rcpt, make_message(tid, sender, [rcpt], subject="gr\u00fc\u00dfe"),
                  ["SMTPUTF8", "BODY=8BITMIME"])
        (got,) = self.pf.wait_delivered(tid, 1, 30)
        self.assertEqual(got.delivered_to, rcpt)
        self.assertEqual(got.return_path, "<%s>" % sender)

    def test_d_smtputf8_refused_without(self):
        tid = new_test_id("off-utf8")
        rcpt = "gr\u00fc\u00dfe@off.test"
        self.send(SENDER, rcpt, make_message(tid, SENDER, [rcpt]), ["SMTPUTF8"])
        wait_for(lambda: self.notices(tid), 30, "hamr's 5.6.7 bounce")
        self.node.wait_queue_empty()
        self.assertEqual([m for m in self.off.delivered() if m.test_id == tid], [])
        (note,) = self.notices(tid)
        self.assertRegex(note, rb"(?m)^Status: 5\.6\.7\r$")
        self.assertRegex(note, rb"(?m)^Action: failed\r$")
        self.assertTrue(re.search(rb"SMTPUTF8", note), note[:1500])


if __name__ == "__main__":
    harness.main()
