#!/usr/bin/python3
"""test_dkim.py - DKIM signing ([dkim]) by one real hamrd, checked by two independent verifiers.

Covers: a node with an RSA 2048 key for example.org and an Ed25519 key for
example.net (made with openssl genpkey, as README.md says) signs mail from
those domains, 8-bit and UTF-8 bodies, blank and trailing-blank lines, a
subdomain through a ".example.net" entry; each delivered file starts with
DKIM-Signature: above hamr's Received: and verifies with python3-dkim
(dkim.verify, the public key handed over by dnsfunc as the TXT record
"v=DKIM1; k=rsa|ed25519; p=...") and with OpenDKIM (opendkim-testmsg, which
has no way to take a key file when verifying: it asks DNS, so a small TXT
server on 127.0.0.x:53 answers it and resolv.conf is bind-mounted in a
private mount namespace; skipped with the reason when that is impossible).
Mail from a domain without a key arrives unsigned and unchanged;
hamr_dkim_signed_total counts by algorithm. Key rotation under load:
SIGHUP while a bounded loop sends, every message signed and verifying with
the old or the new key, none refused; a broken key file and SIGHUP keep the
old keys. A key file that does not load stops the start, naming the file
(as [node] user: an unreadable file says so).
"""

import base64
import email.utils
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import free_port, hostport, make_message, new_test_id, wait_for  # noqa: E402

try:
    import dkim  # python3-dkim
except ImportError:  # pragma: no cover - tests/run.sh installs it
    dkim = None

OPENSSL = shutil.which("openssl")
OPENDKIM_TESTMSG = shutil.which("opendkim-testmsg")
RCPT = "dest@example.com"


def genkey(path, alg):
    """genkey - a PEM private key at path: "rsa" (2048 bits) or "ed25519"."""
    argv = [OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"] \
        if alg == "rsa" else [OPENSSL, "genpkey", "-algorithm", "ed25519"]
    subprocess.run(argv + ["-out", path], check=True, capture_output=True, timeout=120)
    harness.give_to_run_user(path)


def txt_record(path, alg):
    """txt_record - the DNS TXT record of the key at path (README.md, "DKIM keys")."""
    der = subprocess.run([OPENSSL, "pkey", "-in", path, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=30).stdout
    if alg == "ed25519":
        # RFC 8463 4.2: the raw 32-octet key, the end of the SubjectPublicKeyInfo.
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:]).decode()
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


class TxtServer:
    """TxtServer - answers TXT queries for {name: text} on (host, 53) over UDP; others NXDOMAIN."""

    def __init__(self, records):
        self.records = records
        self.sock = None
        for _ in range(20):
            self.host = "127.0.%d.%d" % (random.randrange(1, 255), random.randrange(2, 255))
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((self.host, 53))
            except OSError:
                s.close()
                continue
            self.sock = s
            break
        if self.sock is None:
            raise unittest.SkipTest("no 127.0.x.y:53 free for the TXT server")
        self.sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _answer(self, q):
        qid, _flags, qd = struct.unpack(">HHH", q[:6])
        pos, labels = 12, []
        while q[pos]:
            labels.append(q[pos + 1:pos + 1 + q[pos]].decode("ascii", "replace"))
            pos += 1 + q[pos]
        qtype, _ = struct.unpack(">HH", q[pos + 1:pos + 5])
        question = q[12:pos + 5]
        text = self.records.get(".".join(labels).lower())
        if text is None or qtype != 16:
            return struct.pack(">HHHHHH", qid, 0x8583 if text is None else 0x8580, 1, 0, 0, 0) \
                + question
        raw = text.encode()
        rdata = b"".join(bytes([len(raw[i:i + 255])]) + raw[i:i + 255]
                         for i in range(0, len(raw), 255))
        rr = struct.pack(">HHHIH", 0xC00C, 16, 1, 60, len(rdata)) + rdata
        return struct.pack(">HHHHHH", qid, 0x8580, 1, 1, 0, 0) + question + rr

    def _run(self):
        while not self._stop:
            try:
                q, client = self.sock.recvfrom(4096)
                self.sock.sendto(self._answer(q), client)
            except socket.timeout:
                continue
            except (OSError, IndexError, struct.error):
                if self._stop:
                    return

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


@unittest.skipUnless(dkim is not None, "python3-dkim is not installed")
@unittest.skipUnless(OPENSSL, "the openssl command is not installed")
class DkimTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.keys = os.path.join(cls.env.dir, "keys")
        os.makedirs(cls.keys)
        harness.give_to_run_user(cls.keys)
        cls.rsa = os.path.join(cls.keys, "rsa.pem")
        cls.ed = os.path.join(cls.keys, "ed.pem")
        genkey(cls.rsa, "rsa")
        genkey(cls.ed, "ed25519")
        # selector._domainkey.domain -> TXT: what the verifiers look up.
        cls.dns = {"rsa1._domainkey.example.org": txt_record(cls.rsa, "rsa"),
                   "ed1._domainkey.example.net": txt_record(cls.ed, "ed25519")}
        cls.sink = cls.env.sink().start()
        cls.http_port = free_port()
        # Each indented line continues the key: one key per line.
        keys = "example.org rsa1 %s\n    .example.net ed1 %s\n    example.net ed1 %s" % (
            cls.rsa, cls.ed, cls.ed)
        cls.node = cls.env.node(relayhost_port=cls.sink.port,
                                overrides={"dkim": {"key": keys},
                                           "listen": {"http": hostport("127.0.0.1",
                                                                       cls.http_port)}})
        cls.node.http_port = cls.http_port
        cls.node.start()

    # --- helpers ------------------------------------------------------------

    def dnsfunc(self, name, timeout=5):
        """dnsfunc - python3-dkim's DNS: the TXT record of name (bytes or str), or None."""
        if isinstance(name, bytes):
            name = name.decode()
        text = self.dns.get(name.rstrip(".").lower())
        return text.encode() if text else None

    def deliver(self, sender, body, subject="dkim", extra=(), from_header=None):
        """deliver - send one message; the delivered file's octets."""
        tid = new_test_id("dkim")
        extra = list(extra)
        if not any(h.lower().startswith("date:") for h in extra):
            # OpenDKIM refuses a message without Date: (RFC 5322 3.6) as a syntax error.
            extra.append("Date: " + email.utils.formatdate())
        msg = make_message(tid, sender, [RCPT], subject=subject, body=body, extra_headers=extra)
        if from_header is not None:
            msg = re.sub(rb"(?m)^From: [^\r]*", from_header.encode(), msg, count=1)
        res = self.node.send(sender, [RCPT], msg, mail_options=["BODY=8BITMIME"])
        self.assertReply(res, 250, "2.0.0")
        (rec,) = self.sink.wait_test_id(tid)
        return msg, self.sink.read_file(rec)

    def assertSigned(self, data, d, s, a):
        """assertSigned - data starts with our DKIM-Signature (d, s, a) over Received:; verifies."""
        self.assertTrue(data.startswith(b"DKIM-Signature: v=1; a=%s;" % a.encode()),
                        data[:300])
        head = data.split(b"\r\n\r\n", 1)[0]
        sig_end = re.search(rb"\r\n(?![ \t])", head).end()
        sig = head[:sig_end]
        for line in sig.split(b"\r\n")[:-1]:
            self.assertLess(len(line), 78, "folded line too long: %r" % line)
        self.assertTrue(head[sig_end:].lower().startswith(b"received:"), head[:600])
        flat = re.sub(rb"\s+", b"", sig)
        self.assertIn(b"d=%s;" % d.encode(), flat)
        self.assertIn(b"s=%s;" % s.encode(), flat)
        self.assertIn(b"c=relaxed/relaxed;", flat)
        self.assertRegex(flat, rb";h=from:from:")  # From oversigned by default
        self.assertTrue(dkim.verify(data, dnsfunc=self.dnsfunc),
                        "python3-dkim does not verify:\n%r" % data[:1200])
        self.opendkim_verify(data)

    def opendkim(self, data):
        """opendkim - opendkim-testmsg on data, asking our TXT server: (exit status, output)."""
        argv = ["unshare", "-m", "sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$1"', self.__class__.resolv,
                OPENDKIM_TESTMSG]
        out = subprocess.run(argv, input=data, capture_output=True, timeout=60)
        return out.returncode, (out.stdout + out.stderr).decode("utf-8", "replace")

    def opendkim_verify(self, data):
        """opendkim_verify - opendkim-testmsg verifies data (root only: see the module comment)."""
        if self.txt_server is None:
            return
        rc, text = self.opendkim(data)
        self.assertEqual(rc, 0, "opendkim-testmsg (DNS %s): %s" % (self.txt_server.host, text))
        self.assertEqual(text, "", "opendkim-testmsg complained")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.txt_server = None
        if OPENDKIM_TESTMSG and os.geteuid() == 0 and shutil.which("unshare"):
            cls.txt_server = TxtServer(cls.dns)
            cls.resolv = os.path.join(cls.env.dir, "resolv.conf")
            with open(cls.resolv, "w") as f:
                f.write("nameserver %s\noptions edns0 attempts:2 timeout:2\n"
                        % cls.txt_server.host)

    @classmethod
    def tearDownClass(cls):
        if cls.txt_server:
            cls.txt_server.close()
        super().tearDownClass()

    # --- tests --------------------------------------------------------------

    def test_a_signed_bodies(self):
        bodies = [
            ("utf-8", "Grüße aus Köln, naïve café, Ελληνικά, 日本語\r\n" * 20),
            ("8-bit latin-1", b"caf\xe9 cr\xe8me br\xfbl\xe9e \xff\xfe\r\n" * 10),
            ("blanks", "  leading\r\ntrailing   \t\r\nin  \t the   middle\r\n\r\n\r\n  \r\n"),
            ("dot lines", ".\r\n..two\r\n. space\r\n"),
            ("empty", ""),
            ("no final blank", "x" * 990 + "\r\n" + "y" * 500),
        ]
        extra = ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
                 "Content-Transfer-Encoding: 8bit", "Date: Mon, 07 Dec 2026 05:00:00 +0000",
                 "Reply-To:   Folded\r\n   <reply@example.org>"]
        before = self.node.counters("hamr_dkim_signed_total", label="alg")
        n = {"rsa": 0, "ed25519": 0}
        for label, body in bodies:
            for sender, d, s, a in (("alice@example.org", "example.org", "rsa1", "rsa-sha256"),
                                    ("bob@example.net", "example.net", "ed1", "ed25519-sha256")):
                with self.subTest(body=label, alg=a):
                    _, data = self.deliver(sender, body, extra=extra)
                    self.assertSigned(data, d, s, a)
                    n[a.split("-")[0]] += 1
        # Both verifiers do check: one octet of the body changed fails them.
        bad = data[:-3] + bytes([data[-3] ^ 1]) + data[-2:]
        self.assertFalse(dkim.verify(bad, dnsfunc=self.dnsfunc))
        if self.txt_server is not None:
            rc, text = self.opendkim(bad)
            self.assertNotEqual(rc, 0, text)
            self.assertIn("bad signature", text.lower())
        # A subdomain through the ".example.net" entry: signed as d=example.net.
        _, data = self.deliver("carol@lists.example.net", "sub\r\n",
                               from_header="From: Carol <carol@Lists.Example.NET>")
        self.assertSigned(data, "example.net", "ed1", "ed25519-sha256")
        n["ed25519"] += 1
        after = self.node.counters("hamr_dkim_signed_total", label="alg")
        for alg in n:
            self.assertEqual(after.get(alg, 0) - before.get(alg, 0), n[alg], after)
        self.assertEqual(self.node.counters("hamr_dkim_failures_total", label="alg"),
                         {"rsa": 0, "ed25519": 0})

    def test_b_unsigned_without_key(self):
        for sender in ("dave@example.com", "eve@sub.example.org"):
            msg, data = self.deliver(sender, "no key for this domain\r\n")
            self.assertTrue(data.lower().startswith(b"received:"), data[:200])
            self.assertNotIn(b"DKIM-Signature", data)
            self.assertTrue(data.endswith(msg), "body changed in transit")

    def test_c_reload_under_load(self):
        old = dict(self.dns)
        new_rsa = os.path.join(self.keys, "rsa.new")
        new_ed = os.path.join(self.keys, "ed.new")
        genkey(new_rsa, "rsa")
        genkey(new_ed, "ed25519")
        new = {"rsa1._domainkey.example.org": txt_record(new_rsa, "rsa"),
               "ed1._domainkey.example.net": txt_record(new_ed, "ed25519")}
        results, stop = [], threading.Event()

        def sender_loop():
            for i in range(60):  # bounded
                if stop.is_set() and i >= 20:
                    break
                frm = "load%d@%s" % (i, "example.org" if i % 2 else "example.net")
                tid = new_test_id("dkim-load")
                msg = make_message(tid, frm, [RCPT], subject="load %d" % i,
                                   body="message %d, caf\u00e9\r\n" % i)
                results.append((tid, self.node.send(frm, [RCPT], msg)))

        log_at = len(self.node.proc.log_text())
        t = threading.Thread(target=sender_loop)
        t.start()
        wait_for(lambda: len(results) >= 8, 60, "8 messages before the reload")
        os.replace(new_rsa, self.rsa)
        os.replace(new_ed, self.ed)
        self.node.proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "dkim: 3 keys reloaded" in self.node.proc.log_text()[log_at:], 30,
                 "the DKIM reload in the log")
        stop.set()
        t.join(180)
        self.assertFalse(t.is_alive())
        seen = {"old": 0, "new": 0}
        for tid, res in results:
            self.assertReply(res, 250, "2.0.0")
            (rec,) = self.sink.wait_test_id(tid)
            data = self.sink.read_file(rec)
            self.dns = old
            if dkim.verify(data, dnsfunc=self.dnsfunc):
                seen["old"] += 1
                continue
            self.dns = new
            self.assertTrue(dkim.verify(data, dnsfunc=self.dnsfunc),
                            "verifies with neither key: %r" % data[:600])
            seen["new"] += 1
        self.dns = new
        self.__class__.dns = new
        if self.txt_server:
            self.txt_server.records = new
        self.assertGreater(seen["old"], 0, seen)
        self.assertGreater(seen["new"], 0, seen)

        # A broken file: the reload fails, the keys in use stay.
        log_at = len(self.node.proc.log_text())
        with open(self.ed + ".tmp", "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\ngarbage\n")
        harness.give_to_run_user(self.ed + ".tmp")
        os.replace(self.ed + ".tmp", self.ed)
        self.node.proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload of the DKIM keys failed" in self.node.proc.log_text()[log_at:],
                 30, "the failed DKIM reload in the log")
        self.assertIn(self.ed, self.node.proc.log_text()[log_at:])
        _, data = self.deliver("frank@example.net", "after a failed reload\r\n")
        self.assertSigned(data, "example.net", "ed1", "ed25519-sha256")

    def test_d_bad_key_stops_start(self):
        bad = os.path.join(self.keys, "bad.pem")
        with open(bad, "w") as f:
            f.write("not a key\n")
        harness.give_to_run_user(bad)
        cases = [(bad, "not a PEM private key")]
        if harness.RUN_USER:
            # Readable by root only: [node] user cannot read it.
            secret = os.path.join(self.keys, "root-only.pem")
            shutil.copy(self.rsa, secret)
            os.chmod(secret, 0o600)
            cases.append((secret, "cannot read: Permission denied"))
        for path, why in cases:
            with self.subTest(why=why):
                node = harness.Node(self.env, node_id=9, name="bad%d" % len(why),
                                    overrides={"dkim": {"key": "example.org s1 %s" % path},
                                               "cluster_tls": {"plaintext": "yes"}})
                out = subprocess.run([harness.hamrd_path(), "-c", node.conf_path],
                                     capture_output=True, timeout=120,
                                     stdin=subprocess.DEVNULL)
                text = (out.stdout + out.stderr).decode("utf-8", "replace")
                self.assertNotEqual(out.returncode, 0, text)
                self.assertIn(path, text)
                self.assertIn(why, text)


if __name__ == "__main__":
    harness.main()
