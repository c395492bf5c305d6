#!/usr/bin/python3
"""test_envelope_ext.py - SMTPUTF8, DSN and REQUIRETLS through one real hamrd, end to end.

Python's smtplib is the client; two recording sinks are the next hops: the
relayhost (aiosmtpd without SMTPUTF8, no DSN, no TLS; it refuses nouser*@
with 550 and answers slow@ with 451) and a second one that offers SMTPUTF8,
the [transport] next hop of utf8.test. The node takes STARTTLS and sends
delay notices after 2 s (delay_warning_time).

Checked: EHLO offers SMTPUTF8 and DSN, and REQUIRETLS only inside TLS;
NOTIFY=SUCCESS to a next hop without DSN gives one "relayed" notice with the
ORCPT and ENVID given; NOTIFY=NEVER gives no bounce while a FAILURE neighbour
gets one; a UTF-8 envelope reaches the SMTPUTF8 next hop as it was sent
(MAIL ... SMTPUTF8), and the other next hop's lack of SMTPUTF8 bounces it
5.6.7; a deferred recipient gets exactly one delay notice whatever the number
of attempts, and hamrctl show lists the parameters; REQUIRETLS is refused
outside TLS and, to a next hop without TLS, bounces 5.7.30; "TLS-Required: No"
lets a message through to a domain whose tls_policy is encrypt; an ORCPT of
500 octets and an ENVID of 100 sent as 300, on lines over 512 octets, come
back whole in the notice.
"""

import email
import email.policy
import os
import re
import smtplib
import ssl
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import make_message, new_test_id, wait_for  # noqa: E402

SENDER = "alice@example.org"
UTF8_SENDER = "\u00e9l\u00e8ve@example.org"


class EnvelopeExtTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        d = cls.env.dir
        cls.cert = os.path.join(d, "cert.pem")
        key = os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-days", "2", "-keyout", key, "-out", cls.cert],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=True)
        os.chmod(key, 0o644)
        cls.sink = cls.env.sink(reject_rcpt=r"^nouser", tempfail_rcpt=r"^slow@").start()
        cls.sink8 = cls.env.sink(name="sink8", smtputf8=True).start()
        overrides = {
            "smtpd": {"tls_cert_file": cls.cert, "tls_key_file": key},
            "delivery": {"delay_warning_time": "2s"},
            "transport": {"utf8.test": "[127.0.0.1]:%d" % cls.sink8.port},
            "tls_policy": {"tlsreq.test": "encrypt"},
        }
        cls.node = cls.env.node(relayhost_port=cls.sink.port, overrides=overrides).start()
        # The extensions are offered once the cluster level is 5.
        wait_for(lambda: "DSN" in cls.ehlo_keywords(), 30, "EHLO to offer DSN (cluster level 5)")

    @classmethod
    def connect(cls, tls=False):
        conn = smtplib.SMTP("127.0.0.1", cls.node.smtp_port, local_hostname="client.test",
                            timeout=30)
        conn.ehlo()
        if tls:
            ctx = ssl.create_default_context(cafile=cls.cert)
            ctx.check_hostname = False
            conn.starttls(context=ctx)
            conn.ehlo()
        return conn

    @classmethod
    def ehlo_keywords(cls, tls=False):
        conn = cls.connect(tls)
        try:
            return set(k.upper() for k in conn.esmtp_features)
        finally:
            conn.quit()

    def transact(self, sender, rcpts, data, mail_options=(), tls=False):
        """transact - MAIL, each (rcpt, options), DATA; the replies as a list of (code, text)."""
        conn = self.connect(tls)
        replies = []
        try:
            code, text = conn.mail(sender, list(mail_options))
            replies.append((code, text.decode("utf-8", "replace")))
            if code != 250:
                return replies
            for rcpt, opts in rcpts:
                code, text = conn.rcpt(rcpt, list(opts))
                replies.append((code, text.decode("utf-8", "replace")))
            code, text = conn.data(data)
            replies.append((code, text.decode("utf-8", "replace")))
        except smtplib.SMTPResponseException as e:
            replies.append((e.smtp_code, str(e.smtp_error)))
        finally:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()
        return replies

    def notices(self, sink, to, test_id):
        """notices - the DSNs from <> to `to` at sink that quote test_id, as (record, bytes)."""
        out = []
        for r in sink.records():
            if r["mail_from"] != "" or r["rcpt"] != to:
                continue
            data = sink.read_file(r)
            if test_id.encode() in data:
                out.append((r, data))
        return out

    def test_a_ehlo(self):
        plain = self.ehlo_keywords()
        self.assertIn("SMTPUTF8", plain)
        self.assertIn("DSN", plain)
        self.assertNotIn("REQUIRETLS", plain, "REQUIRETLS offered outside TLS")
        self.assertIn("REQUIRETLS", self.ehlo_keywords(tls=True))

    def test_b_relayed_notice(self):
        tid = new_test_id("relayed")
        rcpt = "bob@example.com"
        data = make_message(tid, SENDER, [rcpt])
        replies = self.transact(SENDER, [(rcpt, ["NOTIFY=SUCCESS,FAILURE",
                                                 "ORCPT=rfc822;Bob+2Bx@example.com"])],
                                data, ["RET=HDRS", "ENVID=env+2B1"])
        self.assertEqual([c for c, _ in replies], [250, 250, 250], replies)
        wait_for(lambda: self.notices(self.sink, SENDER, tid), 30, "the relayed notice")
        self.node.wait_queue_empty()
        got = [r["rcpt"] for r in self.sink.by_test_id(tid) if r["mail_from"] == SENDER]
        self.assertEqual(got, [rcpt], "the message itself, once")
        notes = self.notices(self.sink, SENDER, tid)
        self.assertEqual(len(notes), 1, "exactly one notice")
        body = notes[0][1]
        dsn = email.message_from_bytes(body, policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertRegex(body, rb"(?m)^Action: relayed\r$")
        self.assertRegex(body, rb"(?m)^Status: 2\.0\.0\r$")
        self.assertRegex(body, rb"(?m)^Original-Recipient: rfc822; Bob\+x@example\.com\r$")
        self.assertRegex(body, rb"(?m)^Final-Recipient: rfc822; bob@example\.com\r$")
        self.assertRegex(body, rb"(?m)^Original-Envelope-Id: env\+1\r$")

    def test_c_never(self):
        tid = new_test_id("never")
        data = make_message(tid, SENDER, ["nouser1@example.com", "nouser2@example.com"])
        rejects = self.sink.events("reject_rcpt")
        replies = self.transact(SENDER, [("nouser1@example.com", ["NOTIFY=NEVER"]),
                                         ("nouser2@example.com", ["NOTIFY=FAILURE"])], data)
        self.assertEqual([c for c, _ in replies], [250, 250, 250, 250], replies)
        wait_for(lambda: self.notices(self.sink, SENDER, tid), 30, "the bounce of nouser2")
        self.node.wait_queue_empty()
        self.assertGreaterEqual(self.sink.events("reject_rcpt"), rejects + 2)
        notes = self.notices(self.sink, SENDER, tid)
        self.assertEqual(len(notes), 1)
        body = notes[0][1]
        self.assertIn(b"nouser2@example.com", body)
        self.assertNotIn(b"nouser1@example.com", self.report_part(body))

    @staticmethod
    def report_part(body):
        """report_part - the message/delivery-status part of a DSN, as bytes."""
        dsn = email.message_from_bytes(body, policy=email.policy.default)
        for part in dsn.walk():
            if part.get_content_type() in ("message/delivery-status",
                                           "message/global-delivery-status"):
                return part.as_bytes()
        raise AssertionError("no delivery-status part in %r" % body[:800])

    def test_d_smtputf8_delivered(self):
        tid = new_test_id("utf8")
        rcpt = "d\u00e9st@utf8.test"
        data = make_message(tid, UTF8_SENDER, [rcpt], subject="caf\u00e9")
        replies = self.transact(UTF8_SENDER, [(rcpt, [])], data, ["SMTPUTF8", "BODY=8BITMIME"])
        self.assertEqual([c for c, _ in replies], [250, 250, 250], replies)
        recs = self.sink8.wait_test_id(tid, 1, 30)
        self.assertEqual(recs[0]["rcpt"], rcpt)
        self.assertEqual(recs[0]["mail_from"], UTF8_SENDER)
        self.assertIn("SMTPUTF8", [o.upper() for o in recs[0]["mail_options"]])
        self.assertIn("caf\u00e9".encode(), self.sink8.read_file(recs[0]))

    def test_e_smtputf8_downgrade_bounce(self):
        tid = new_test_id("utf8-bounce")
        rcpt = "d\u00e9st@example.com"
        data = make_message(tid, SENDER, [rcpt])
        replies = self.transact(SENDER, [(rcpt, [])], data, ["SMTPUTF8"])
        self.assertEqual([c for c, _ in replies], [250, 250, 250], replies)
        wait_for(lambda: self.notices(self.sink, SENDER, tid), 30, "the 5.6.7 bounce")
        self.node.wait_queue_empty()
        self.assertEqual([r for r in self.sink.records() if r["rcpt"] == rcpt], [],
                         "downgraded and delivered")
        report = self.report_part(self.notices(self.sink, SENDER, tid)[0][1])
        self.assertRegex(report, rb"Status: 5\.6\.7")
        self.assertIn("d\u00e9st@example.com".encode(), report)

    def test_f_delay_once(self):
        tid = new_test_id("delay")
        rcpt = "slow@example.com"
        data = make_message(tid, SENDER, [rcpt])
        replies = self.transact(SENDER, [(rcpt, ["NOTIFY=DELAY,FAILURE"])], data)
        self.assertEqual([c for c, _ in replies], [250, 250, 250], replies)
        wait_for(lambda: self.notices(self.sink, SENDER, tid), 30, "the delay notice")
        before = self.sink.events("tempfail_rcpt")
        wait_for(lambda: self.sink.events("tempfail_rcpt") >= before + 2, 30,
                 "two more attempts after the notice")
        notes = self.notices(self.sink, SENDER, tid)
        self.assertEqual(len(notes), 1, "one delay notice per message")
        report = self.report_part(notes[0][1])
        self.assertRegex(report, rb"Action: delayed")
        self.assertRegex(report, rb"Status: 4\.3\.0")
        self.assertRegex(report, rb"Will-Retry-Until: ")
        ids = [m["queue_id"] for m in self.node.queue() if m.get("sender") == SENDER]
        self.assertEqual(len(ids), 1, self.node.queue())
        out = subprocess.run([harness.hamrctl_path(), "-s", "127.0.0.1:%d" % self.node.control_port,
                              "show", ids[0]], capture_output=True, timeout=15,
                             env=self.node.ctl_env())
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"dsn: NOTIFY=FAILURE,DELAY", out.stdout)
        self.node.ctl("delete", ids[0])
        self.node.wait_queue_empty()

    def test_g_requiretls(self):
        tid = new_test_id("requiretls")
        rcpt = "bob@example.com"
        data = make_message(tid, SENDER, [rcpt])
        replies = self.transact(SENDER, [(rcpt, [])], data, ["REQUIRETLS"])
        self.assertTrue(500 <= replies[0][0] < 600, replies)
        replies = self.transact(SENDER, [(rcpt, [])], data, ["REQUIRETLS"], tls=True)
        self.assertEqual([c for c, _ in replies], [250, 250, 250], replies)
        wait_for(lambda: self.notices(self.sink, SENDER, tid), 30, "the 5.7.30 bounce")
        self.node.wait_queue_empty()
        self.assertEqual([r for r in self.sink.by_test_id(tid) if r["mail_from"] == SENDER], [],
                         "a REQUIRETLS message went to a next hop without TLS")
        self.assertRegex(self.report_part(self.notices(self.sink, SENDER, tid)[0][1]),
                         rb"Status: 5\.7\.30")

    def test_h_tls_required_no(self):
        tid = new_test_id("tlsreq-no")
        rcpt = "carol@tlsreq.test"
        data = make_message(tid, SENDER, [rcpt], extra_headers=["TLS-Required: No"])
        replies = self.transact(SENDER, [(rcpt, [])], data)
        self.assertEqual([c for c, _ in replies], [250, 250, 250], replies)
        recs = self.sink.wait_test_id(tid, 1, 30)
        self.assertEqual(recs[0]["rcpt"], rcpt)

    def test_i_long_lines(self):
        # RFC 3461 lets RCPT and MAIL lines grow past RFC 5321's 512 octets:
        # an ORCPT of 500 octets (986 on the wire) and an ENVID of 100 sent
        # as 300 are taken whole and come back whole in the notice.
        tid = new_test_id("longdsn")
        rcpt = "dora@example.com"
        addr = "a+" * 243 + "@x.test"
        self.assertEqual(len("rfc822;" + addr), 500)
        orcpt = "ORCPT=rfc822;" + addr.replace("+", "+2B")
        envid = "ENVID=" + "+2B" * 100
        self.assertGreater(len("RCPT TO:<%s> NOTIFY=SUCCESS %s" % (rcpt, orcpt)), 1000)
        data = make_message(tid, SENDER, [rcpt])
        replies = self.transact(SENDER, [(rcpt, ["NOTIFY=SUCCESS", orcpt])], data,
                                ["SIZE=%d" % len(data), "BODY=8BITMIME", "RET=HDRS", envid])
        self.assertEqual([c for c, _ in replies], [250, 250, 250], replies)
        wait_for(lambda: self.notices(self.sink, SENDER, tid), 30, "the relayed notice")
        self.node.wait_queue_empty()
        body = self.notices(self.sink, SENDER, tid)[0][1]
        self.assertIn(b"\r\nOriginal-Recipient: rfc822; " + addr.encode() + b"\r\n", body)
        self.assertIn(b"\r\nOriginal-Envelope-Id: " + b"+" * 100 + b"\r\n", body)


if __name__ == "__main__":
    harness.main()
