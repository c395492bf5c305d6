#!/usr/bin/python3
"""test_smtp_auth_out.py - outbound SMTP AUTH to a relayhost ([delivery] auth_file).

The relayhost is an aiosmtpd server in this process that requires STARTTLS
and AUTH (PLAIN or LOGIN, over TLS only) and accepts one user. hamrd relays
to it under the default TLS policy (may): with credentials for the next hop
STARTTLS is required before AUTH. Retries wait an hour, so a deferred
message stays deferred until "hamrctl flush".

  a  the right password: a message is delivered, inside TLS, authenticated
     as the user.
  b  a wrong password (file rewritten, SIGHUP): the next message is
     deferred, "hamrctl show" gives the 535 in its last error; a reload of a
     file others may read fails, is logged and keeps the old table; the
     fixed file, SIGHUP and "hamrctl flush": delivered.
  c  no line of hamrd's log (at debug level) holds a password or the base64
     that carries one.
  d  a credentials file others may read stops hamrd at start, naming the file.

Skips when aiosmtpd or openssl is missing.
"""

import base64
import os
import shutil
import signal
import ssl
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import field, make_message, new_test_id, wait_for  # noqa: E402

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
except ImportError:  # the whole test skips
    Controller = None

USER = "relayuser"
PASS = "Good-pw:with spaces"
WRONG = "Wrong-pw-123"
HOLD_RETRIES = {"retry_min": "1h", "retry_max": "1h"}


class RecordingHandler:
    """RecordingHandler - aiosmtpd handler: 250 to DATA; records TLS, the user and the data."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = []  # (tls cipher or None, authenticated user or None, data bytes)
        self.auth_tries = []  # (mechanism, login, success)

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
              and auth_data.password == PASS.encode())
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None
        with self.lock:
            self.auth_tries.append((mechanism, login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def handle_DATA(self, server, session, envelope):
        cipher = session.ssl.get("cipher") if session.ssl else None
        user = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            user = session.auth_data.login.decode()
        with self.lock:
            self.messages.append((cipher, user, bytes(envelope.content)))
        return "250 2.0.0 accepted"

    def with_test_id(self, tid):
        with self.lock:
            return [m for m in self.messages if tid.encode() in m[2]]


def write_auth(path, port, password, mode=0o600):
    """write_auth - the credentials file for the relayhost "[127.0.0.1]:port"."""
    with open(path, "w") as f:
        f.write("# outbound AUTH for the test relayhost\n")
        f.write("[127.0.0.1]:%d %s:%s\n" % (port, USER, password))
    os.chmod(path, mode)
    harness.give_to_run_user(path)


@unittest.skipIf(Controller is None or shutil.which("openssl") is None,
                 "needs python3-aiosmtpd and openssl")
class SmtpAuthOutTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cert, key = harness.make_ip_cert(cls.env.dir, "relay")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        cls.handler = RecordingHandler()
        cls.controller = Controller(cls.handler, hostname="127.0.0.1", port=harness.free_port(),
                                    tls_context=ctx, require_starttls=True, auth_required=True,
                                    auth_require_tls=True,
                                    authenticator=cls.handler.authenticator)
        cls.controller.start()
        cls.auth_file = os.path.join(cls.env.dir, "relay_passwd")
        write_auth(cls.auth_file, cls.controller.port, PASS)
        delivery = dict(HOLD_RETRIES, auth_file=cls.auth_file)
        cls.node = cls.env.node(node_id=1, name="authout", relayhost_port=cls.controller.port,
                                overrides={"delivery": delivery}).start()

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "controller", None) is not None:
            cls.controller.stop()
        super().tearDownClass()

    # --- helpers ------------------------------------------------------------

    def submit(self, tag):
        """submit - one message for the relayhost (250 required); returns (test id, queue id)."""
        tid = new_test_id(tag)
        sender, rcpt = "auth-out@example.org", "someone@example.com"
        res = self.node.send(sender, [rcpt], make_message(tid, sender, [rcpt]), retries_4xx=0)
        self.assertReply(res, 250, "2.0.0")
        return tid, res.queue_id

    def wait_delivered(self, tid):
        """wait_delivered - until the relayhost has the message of tid; returns it."""
        def got():
            self.node.check_alive()
            return self.handler.with_test_id(tid) or None

        (m,) = wait_for(got, 30, "message %s at the relayhost" % tid, interval=0.1)
        return m

    def hup(self, pattern):
        """hup - SIGHUP hamrd, then wait for pattern in its log after now."""
        skip = len(self.node.proc.log_text())
        self.node.proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: pattern in self.node.proc.log_text()[skip:], 15,
                 "%r in the log after SIGHUP" % pattern, interval=0.1)

    # --- cases --------------------------------------------------------------

    def test_a_delivered_with_auth(self):
        tid, _ = self.submit("auth-ok")
        cipher, user, _ = self.wait_delivered(tid)
        self.assertIsNotNone(cipher, "delivered without TLS")
        self.assertEqual(user, USER)
        self.node.wait_queue_empty()

    def test_b_wrong_password_then_fixed(self):
        write_auth(self.auth_file, self.controller.port, WRONG)
        self.hup("smtpc auth reloaded")
        with self.handler.lock:
            tries = len(self.handler.auth_tries)
        tid, qid = self.submit("auth-wrong")

        def deferred():
            self.node.check_alive()
            (entry,) = field(self.node.ctl("show", qid), "entries")
            (r,) = field(entry, "rcpts")
            return r if int(field(r, "attempts", 0) or 0) >= 1 else None

        r = wait_for(deferred, 30, "%s to have been tried" % qid, interval=0.1)
        self.assertEqual(field(r, "state"), "deferred", r)
        err = field(r, "last_error")
        self.assertIn("SASL authentication failed", err)
        self.assertIn("535", err)
        self.assertEqual(self.handler.with_test_id(tid), [])
        with self.handler.lock:
            self.assertIn(("PLAIN", USER, False), self.handler.auth_tries[tries:])
        queued = [e for e in self.node.queue() if field(e, "queue_id") == qid]
        self.assertEqual(len(queued), 1, self.node.queue())

        # A fixed file that others may read: the reload fails, the old table stays.
        write_auth(self.auth_file, self.controller.port, PASS, mode=0o644)
        self.hup("reload of the delivery credentials file failed")
        self.assertIn("%s:0: " % self.auth_file, self.node.proc.log_text())
        self.node.ctl("flush")
        wait_for(lambda: int(field(deferred(), "attempts", 0) or 0) >= 2, 30,
                 "%s to have been tried again" % qid, interval=0.1)
        self.assertEqual(self.handler.with_test_id(tid), [])

        # Closed to others, SIGHUP, flush: delivered.
        os.chmod(self.auth_file, 0o600)
        self.hup("smtpc auth reloaded")
        self.node.ctl("flush")
        cipher, user, _ = self.wait_delivered(tid)
        self.assertIsNotNone(cipher)
        self.assertEqual(user, USER)
        self.node.wait_queue_empty()

    def test_c_no_password_in_the_log(self):
        log = self.node.proc.log_text()
        self.assertIn("authenticated user=%s" % USER, log)
        for secret in (PASS, WRONG):
            self.assertNotIn(secret, log)
            for blob in (secret.encode(), ("\0%s\0%s" % (USER, secret)).encode()):
                self.assertNotIn(base64.b64encode(blob).decode(), log)

    def test_d_open_file_stops_the_start(self):
        path = os.path.join(self.env.dir, "open_passwd")
        write_auth(path, self.controller.port, PASS, mode=0o644)
        node = self.env.node(node_id=1, name="openfile", relayhost_port=self.controller.port,
                             overrides={"delivery": {"auth_file": path}})
        node.start(wait=False)
        wait_for(lambda: not node.proc.alive(), 30, "hamrd with an open auth_file to exit")
        self.assertNotEqual(node.proc.popen.returncode, 0)
        node.proc.kill9()
        log = node.proc.log_text()
        self.assertIn("%s:0: holds passwords but others may read or write it" % path, log)
        self.assertNotIn(PASS, log)


if __name__ == "__main__":
    harness.main()
