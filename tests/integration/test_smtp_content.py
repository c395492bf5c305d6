#!/usr/bin/python3
"""test_smtp_content.py - message content, envelope syntax and TLS rows of SECURITY.md section 2.

What it does: starts one hamrd with STARTTLS (a self-signed certificate made
per run with openssl), SMTP AUTH (a credentials file made with hamr-passwd),
small limits (message_size_limit 4M, header_size_limit 16K, recipient_limit
10) and a recording sink as its relayhost, then sends each hostile input over
a raw socket (or with openssl s_client, swaks and sslscan) and checks the
reply code and enhanced code owed.

Each case runs inside nothing_extra: an idle bystander session is opened
before the input and must still answer NOOP after it, and a barrier message
is sent through another session afterwards. Once the barrier has reached the
sink and the queue is empty, the only new deliveries may be the barrier and
the messages the case itself had accepted. That proves nothing partial or
extra was queued and that the node is alive and serving other clients; at
the end the node must stop cleanly on SIGTERM with no ASan/UBSan report.

Rows: S2 bare CR and mixed terminators, and outbound dot-stuffing and CRLF
(byte-exact at the sink); S3 NUL in data and in commands; S4 STARTTLS
command injection, state reset inside TLS, openssl s_client and swaks
--tls; S7 a 2 MB body line kept byte-exact, header blocks over the limit;
S9 recipient limit, error limit, delivery to the accepted recipients only;
S10 malformed paths and parameters, source routes; S11 SMTPUTF8; S17 the
TLS versions, ciphers, compression and renegotiation (sslscan and a raw
ClientHello), AUTH only inside TLS; S22 CHUNKING: a BDAT message byte-exact
at the sink, BDAT out of order, mixed with DATA, with bad sizes, over the
size limit and with a bare LF.

The sink is deploy/sink.py run with a longer line limit (its own limit is
64 KB), so that a 2 MB line can be recorded rather than refused.

Run: HAMRD=build/hamrd HAMRCTL=build/hamrctl /usr/bin/python3 tests/integration/test_smtp_content.py
"""

import base64
import contextlib
import hashlib
import os
import re
import shutil
import ssl
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import RawSMTP, make_message, new_test_id, sha256_hex  # noqa: E402

CONTENT_SIZE_LIMIT = 4 * 1024 * 1024
CONTENT_HEADER_LIMIT = 16 * 1024
CONTENT_RCPT_LIMIT = 10
CONTENT_MAX_ERRORS = 20
CONTENT_SINK_LINE_MAX = 8 * 1024 * 1024  # room for the 2 MB body line
AUTH_USER = "alice"
AUTH_PASSWORD = "correct horse battery staple"

# An enhanced status code (RFC 3463) in a reply text.
ENHANCED_RE = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")

# A wrapper around deploy/sink.py: the same sink with a longer line limit.
SINK_WRAPPER = """\
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("hamr_sink", %r)
sink = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sink)
sink.SinkSMTP.line_length_limit = %d
sys.exit(sink.main())
"""


class LongLineSink(harness.Sink):
    """LongLineSink - deploy/sink.py through SINK_WRAPPER (lines up to CONTENT_SINK_LINE_MAX)."""

    def start(self, timeout=15):
        wrapper = os.path.join(self.env.dir, "sink_long_lines.py")
        with open(wrapper, "w") as f:
            f.write(SINK_WRAPPER % (harness.sink_path(), CONTENT_SINK_LINE_MAX))
        argv = [harness.PYTHON, wrapper, "--listen", "%s:%d" % (self.host, self.port),
                "--dir", self.dir, "--log", self.log_path] + self.options
        log_path = os.path.join(self.env.dir, self.name + ".log")
        self.proc = self.env.spawn(self.name, argv)

        def listening():
            self.proc.check_alive()
            with open(log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            m = re.search(r"sink listening on [\d.]+:(\d+)", text)
            return m and int(m.group(1))

        self.port = harness.wait_for(listening, timeout, "%s to listen" % self.name)
        return self


class TlsSMTP(RawSMTP):
    """TlsSMTP - RawSMTP that can switch to TLS in place after STARTTLS."""

    def starttls(self, cafile):
        """starttls - TLS handshake on the socket; the server must have sent nothing after 220."""
        if self.buf:
            raise AssertionError("plaintext after 220 to STARTTLS: %r" % self.buf[:200])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile)
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        return self.sock


def content_stuff(body):
    """content_stuff - RFC 5321 4.5.2 dot-stuffing of a CRLF body, as a client sends it."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def content_strip_received(data):
    """content_strip_received - data without its first header if that is Received: (folded)."""
    if data[:9].lower() != b"received:":
        return data
    pos = data.find(b"\r\n")
    while pos >= 0 and data[pos + 2:pos + 3] in (b" ", b"\t"):
        pos = data.find(b"\r\n", pos + 2)
    return b"" if pos < 0 else data[pos + 2:]


def content_bare_line_ends(data):
    """content_bare_line_ends - offsets of CRs not followed by LF and LFs not after CR."""
    return [m.start() for m in re.finditer(rb"\r(?!\n)|(?<!\r)\n", data)]


def content_client_hello(compression_methods):
    """content_client_hello - a TLS 1.2 ClientHello record offering these compression methods."""
    ciphers = [0xC02F, 0xC030, 0xCCA8, 0xC02B, 0xC02C, 0x009C, 0x009D, 0x002F, 0x0035]
    body = b"\x03\x03" + os.urandom(32) + b"\x00"
    suites = b"".join(struct.pack(">H", c) for c in ciphers)
    body += struct.pack(">H", len(suites)) + suites
    body += struct.pack(">B", len(compression_methods)) + bytes(compression_methods)
    groups = struct.pack(">HHH", 4, 0x001D, 0x0017)  # x25519, secp256r1
    formats = b"\x01\x00"  # uncompressed points
    sigalgs = struct.pack(">HHHHH", 8, 0x0804, 0x0401, 0x0403, 0x0501)
    exts = struct.pack(">HH", 10, len(groups)) + groups
    exts += struct.pack(">HH", 11, len(formats)) + formats
    exts += struct.pack(">HH", 13, len(sigalgs)) + sigalgs
    exts += struct.pack(">HH", 0xFF01, 1) + b"\x00"  # renegotiation_info, initial
    body += struct.pack(">H", len(exts)) + exts
    handshake = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


def content_read_exact(sock, n, deadline):
    """content_read_exact - n bytes from sock before deadline (monotonic), or AssertionError."""
    out = b""
    while len(out) < n:
        if time.monotonic() > deadline:
            raise AssertionError("timed out reading %d bytes (have %d)" % (n, len(out)))
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise AssertionError("connection closed after %d of %d bytes" % (len(out), n))
        out += chunk
    return out


def content_server_hello(sock, timeout=10):
    """content_server_hello - (version, cipher, compression method) of the ServerHello."""
    deadline = time.monotonic() + timeout
    rtype, _, rlen = struct.unpack(">BHH", content_read_exact(sock, 5, deadline))
    record = content_read_exact(sock, rlen, deadline)
    if rtype != 0x16 or record[0] != 0x02:
        raise AssertionError("no ServerHello: record type %d, first octets %r"
                             % (rtype, record[:8]))
    p = 4
    version = struct.unpack(">H", record[p:p + 2])[0]
    p += 2 + 32
    p += 1 + record[p]
    cipher = struct.unpack(">H", record[p:p + 2])[0]
    compression = record[p + 2]
    return version, cipher, compression


def content_sslscan_ciphers(text):
    """content_sslscan_ciphers - (protocol, bits, name) of every Accepted/Preferred cipher line."""
    out = []
    for m in re.finditer(r"^(?:Accepted|Preferred)\s+(\S+)\s+(\d+)\s+bits\s+(\S+)", text, re.M):
        out.append((m.group(1), int(m.group(2)), m.group(3)))
    return out


def content_weak_cipher(name):
    """content_weak_cipher - the reason name is a weak cipher, or None."""
    tokens = set(re.split(r"[-_]", name.upper()))
    for bad in ("NULL", "ENULL", "ANULL", "RC4", "DES", "3DES", "MD5", "ADH", "AECDH", "ANON",
                "EXPORT", "RC2", "IDEA", "SEED"):
        if bad in tokens:
            return bad
    if any(t.startswith("EXP") for t in tokens):
        return "EXPORT"
    if "CBC3" in tokens or "DES-CBC3" in name.upper():
        return "3DES"
    return None


class ContentTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        d = cls.env.dir
        cls.cert = os.path.join(d, "cert.pem")
        cls.key = os.path.join(d, "key.pem")
        out = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                              "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                              "-days", "2", "-keyout", cls.key, "-out", cls.cert],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError("openssl req failed: %s" % out.stderr.decode(errors="replace"))
        cls.auth_file = os.path.join(d, "auth")
        with open(cls.auth_file, "w") as f:
            f.write(cls.auth_line() + "\n")
        os.chmod(cls.auth_file, 0o600)
        smtpd = {
            "relay_networks": "10.0.0.0/8",
            "message_size_limit": "4M",
            "header_size_limit": "16K",
            "recipient_limit": str(CONTENT_RCPT_LIMIT),
            "max_errors": str(CONTENT_MAX_ERRORS),
            "tls_cert_file": cls.cert,
            "tls_key_file": cls.key,
            "auth_file": cls.auth_file,
        }
        cls.sink = LongLineSink(cls.env)
        cls.env.sinks.append(cls.sink)
        cls.sink.start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port, overrides={"smtpd": smtpd}).start()

    @classmethod
    def auth_line(cls):
        """auth_line - "user:$pbkdf2-sha256$..." from hamr-passwd beside hamrd, 1000 rounds."""
        passwd = os.path.join(os.path.dirname(harness.hamrd_path()), "hamr-passwd")
        if not os.path.exists(passwd):
            raise AssertionError("hamr-passwd not built next to hamrd (%s)" % passwd)
        out = subprocess.run([passwd, "-i", "1000", AUTH_USER], input=AUTH_PASSWORD.encode(),
                             capture_output=True, timeout=30)
        if out.returncode != 0:
            raise AssertionError("hamr-passwd failed: %s" % out.stderr.decode(errors="replace"))
        return out.stdout.decode().strip()

    # -- helpers ---------------------------------------------------------

    def connect(self, **kw):
        conn = TlsSMTP(self.node.smtp_port, **kw)
        self.addCleanup(conn.close)
        return conn

    def ehlo(self, conn, name="client.test"):
        """ehlo - EHLO that must succeed; returns the keyword lines (upper case)."""
        code, text = conn.cmd("EHLO " + name)
        self.assertEqual(code, 250, text)
        return [line[4:].upper() for line in text.split("\n")[1:]]

    def start_tx(self, conn, sender, rcpt):
        """start_tx - greeting, EHLO, MAIL, RCPT, DATA; each must succeed."""
        self.assertEqual(conn.greeting[0], 220, conn.greeting)
        self.ehlo(conn)
        self.assertReply(conn.cmd("MAIL FROM:<%s>" % sender), 250, "2.1.0")
        self.assertReply(conn.cmd("RCPT TO:<%s>" % rcpt), 250, "2.1.5")
        self.assertReply(conn.cmd("DATA"), 354)

    def assertClear5xx(self, reply, msg=None):
        """assertClear5xx - a permanent failure with an enhanced code 5.x.x."""
        code, text = reply
        self.assertTrue(code is not None and 500 <= code < 600, msg or "reply was %r" % (reply,))
        m = ENHANCED_RE.search(text)
        self.assertTrue(m and m.group(0).startswith("5."), msg or "no 5.x.x in %r" % (reply,))

    @contextlib.contextmanager
    def nothing_extra(self, allowed=()):
        """nothing_extra - afterwards the bystander is served; only barrier/allowed delivered."""
        with harness.nothing_extra(self, self.node, self.sink, allowed):
            bystander = self.connect()
            self.assertEqual(bystander.greeting[0], 220, bystander.greeting)
            self.ehlo(bystander, "bystander.test")
            yield
            self.node.check_alive()
            self.assertReply(bystander.cmd("NOOP"), 250, "2.0.0", "bystander session broken")
            self.assertReply(bystander.cmd("QUIT"), 221)

    def smuggle_payload(self, tid, form):
        """smuggle_payload - a body with a fake terminator, a smuggled transaction, the real end."""
        return (b"From: <content@example.org>\r\nX-Test-Id: " + tid.encode() +
                b"\r\nSubject: smuggling\r\n\r\nhello" + form +
                b"MAIL FROM:<smuggled@example.org>\r\n"
                b"RCPT TO:<victim@example.com>\r\n"
                b"DATA\r\n"
                b"X-Test-Id: " + tid.encode() + b"-smuggled\r\n\r\n"
                b"smuggled body\r\n.\r\n")

    # -- S2 --------------------------------------------------------------

    def test_s2_bare_cr_and_mixed_terminators(self):
        forms = [b"\r.\r", b"\r.\r\n", b"\n.\r", b"\r\n.\r", b"\r\n.\n"]
        tids = {form: new_test_id("s2") for form in forms}
        outcomes = {}
        with self.nothing_extra(allowed=set(tids.values())):
            for form in forms:
                with self.subTest(form=form):
                    conn = self.connect()
                    self.start_tx(conn, "s2@example.org", "s2@example.com")
                    conn.send(self.smuggle_payload(tids[form], form))
                    code, text = conn.reply()
                    outcomes[form] = code
                    # Strict: 550 5.5.2. Opaque: one message, smuggled text kept as body.
                    self.assertIn(code, (550, 250), "form %r: %s" % (form, text))
                    self.assertIn("5.5.2" if code == 550 else "2.0.0", text)
                    self.assertReply(conn.cmd("QUIT"), 221, "2.0.0",
                                     "form %r: extra replies (a command was run)" % form)
        for form in forms:
            recs = self.sink.by_test_id(tids[form])
            if outcomes.get(form) == 250:
                self.assertEqual(len(recs), 1, "form %r: %r" % (form, recs))
                self.assertEqual(recs[0]["mail_from"], "s2@example.org")
                self.assertIn(b"smuggled body", harness.Sink.read_file(recs[0]))
            else:
                self.assertEqual(recs, [], "form %r was rejected but delivered" % form)

    def test_s2_outbound_crlf_and_dot_stuffing(self):
        tid = new_test_id("s2out")
        body = (b".\r\n..\r\n...\r\n.leading dot\r\n..two dots\r\n. space\r\n"
                b"middle . dot\r\n.\r\nlast line ends with a dot.\r\n..\r\n")
        message = make_message(tid, "s2out@example.org", ["s2out@example.com"], body=body)
        with self.nothing_extra(allowed={tid}):
            conn = self.connect()
            self.start_tx(conn, "s2out@example.org", "s2out@example.com")
            conn.send(content_stuff(message) + b".\r\n")
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.cmd("QUIT"), 221)
        recs = self.sink.by_test_id(tid)
        self.assertEqual(len(recs), 1, recs)
        data = harness.Sink.read_file(recs[0])
        self.assertTrue(data.startswith(b"Received: from "), data[:80])
        self.assertEqual(content_bare_line_ends(data), [], "bare CR/LF sent downstream")
        self.assertTrue(data.endswith(b"\r\n"))
        delivered = content_strip_received(data)
        self.assertEqual(delivered, message, "dot-stuffed lines not delivered byte-exact")
        self.assertEqual(recs[0]["sha256_after_received"], sha256_hex(message))

    # -- S3 --------------------------------------------------------------

    def test_s3_nul_in_data(self):
        cases = {
            "nul before dot": lambda tid: self.smuggle_payload(tid, b"\r\n\x00.\r\n"),
            "nul after dot": lambda tid: self.smuggle_payload(tid, b"\r\n.\x00\r\n"),
            "nul in header": lambda tid: make_message(tid, "s3@example.org", ["s3@example.com"],
                                                      subject="a\x00b") + b".\r\n",
            "nul in body": lambda tid: make_message(tid, "s3@example.org", ["s3@example.com"],
                                                    body=b"one\r\ntw\x00o\r\n") + b".\r\n",
        }
        tids = {label: new_test_id("s3") for label in cases}
        with self.nothing_extra():
            for label, build in cases.items():
                with self.subTest(case=label):
                    conn = self.connect()
                    self.start_tx(conn, "s3@example.org", "s3@example.com")
                    conn.send(build(tids[label]))  # each ends with the real CRLF . CRLF
                    self.assertReply(conn.reply(), 554, "5.6.0", "%s" % label)
                    self.assertReply(conn.cmd("QUIT"), 221, "2.0.0",
                                     "%s: extra replies (a command was run)" % label)
        for label, tid in tids.items():
            self.assertEqual(self.sink.by_test_id(tid), [], label)

    def test_s3_nul_in_command(self):
        lines = [b"NOOP\x00", b"EHLO nul\x00.example", b"MAIL FROM:<a\x00@example.org>",
                 b"\x00RSET", b"RCPT TO:<s3@example.com>\x00"]
        with self.nothing_extra():
            conn = self.connect()
            self.ehlo(conn)
            for line in lines:
                with self.subTest(line=line):
                    conn.send(line + b"\r\n")
                    self.assertReply(conn.reply(), 500, "5.5.2")
            # The session still works, and no NUL line ran as a command (no MAIL is open).
            self.assertReply(conn.cmd("RCPT TO:<s3@example.com>"), 503, "5.5.1")
            self.assertReply(conn.cmd("QUIT"), 221)

    # -- S4 --------------------------------------------------------------

    def test_s4_starttls_injection(self):
        tid = new_test_id("s4")
        injected = [b"RSET\r\n", b"MAIL FROM:<injected@example.org>\r\n",
                    b"EHLO injected.test\r\nMAIL FROM:<injected@example.org>\r\n"
                    b"RCPT TO:<injected@example.com>\r\n"]
        with self.nothing_extra(allowed={tid}):
            for i, tail in enumerate(injected):
                with self.subTest(injected=tail):
                    conn = self.connect()
                    keywords = self.ehlo(conn)
                    self.assertIn("STARTTLS", keywords)
                    conn.send(b"STARTTLS\r\n" + tail)
                    self.assertReply(conn.reply(), 220, "2.0.0")
                    tls = conn.starttls(self.cert)
                    self.assertTrue(tls.version() in ("TLSv1.2", "TLSv1.3"), tls.version())
                    # The first reply inside TLS answers our own command: state was reset,
                    # so MAIL before EHLO is refused (a run RSET would have answered 250).
                    self.assertReply(conn.cmd("MAIL FROM:<s4@example.org>"), 503, "5.5.1")
                    keywords = self.ehlo(conn)
                    self.assertNotIn("STARTTLS", keywords)
                    self.assertReply(conn.cmd("STARTTLS"), 554, "5.5.1")
                    # No injected MAIL is open: RCPT needs a MAIL of our own.
                    self.assertReply(conn.cmd("RCPT TO:<s4@example.com>"), 503, "5.5.1")
                    if i == len(injected) - 1:
                        self.assertReply(conn.cmd("MAIL FROM:<s4@example.org>"), 250, "2.1.0")
                        self.assertReply(conn.cmd("RCPT TO:<s4@example.com>"), 250, "2.1.5")
                        self.assertReply(conn.cmd("DATA"), 354)
                        conn.send(make_message(tid, "s4@example.org", ["s4@example.com"]) +
                                  b".\r\n")
                        self.assertReply(conn.reply(), 250, "2.0.0")
                    self.assertReply(conn.cmd("QUIT"), 221)
            conn = self.connect()
            self.ehlo(conn)
            self.assertReply(conn.cmd("STARTTLS now"), 501, "5.5.4")
            self.assertReply(conn.cmd("QUIT"), 221)
        recs = self.sink.by_test_id(tid)
        self.assertEqual([(r["mail_from"], r["rcpt"]) for r in recs],
                         [("s4@example.org", "s4@example.com")])
        self.assertIn(b"with ESMTPS", harness.Sink.read_file(recs[0]))

    def test_s4_openssl_s_client(self):
        with self.nothing_extra():
            out = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                                  "127.0.0.1:%d" % self.node.smtp_port, "-CAfile", self.cert,
                                  "-crlf", "-ign_eof", "-brief"],
                                 input=b"EHLO sclient.test\nQUIT\n", capture_output=True,
                                 timeout=60)
            stdout = out.stdout.decode(errors="replace")
            stderr = out.stderr.decode(errors="replace")
            self.assertEqual(out.returncode, 0, stdout + stderr)
            self.assertIn("CONNECTION ESTABLISHED", stderr)
            m = re.search(r"Protocol version: (\S+)", stderr)
            self.assertTrue(m and m.group(1) in ("TLSv1.2", "TLSv1.3"), stderr)
            # What s_client prints is what came inside TLS: our EHLO's reply, then QUIT's.
            self.assertRegex(stdout, r"(?m)^250-node1\.relay\.test\r?$")
            self.assertRegex(stdout, r"(?m)^250-AUTH PLAIN LOGIN\r?$")
            self.assertNotIn("STARTTLS", stdout)
            self.assertRegex(stdout, r"(?m)^221 2\.0\.0")

    def test_s4_swaks_tls(self):
        tid = new_test_id("swaks")
        with self.nothing_extra(allowed={tid}):
            out = subprocess.run(["swaks", "--server", "127.0.0.1", "--port",
                                  str(self.node.smtp_port), "--tls", "--helo", "swaks.test",
                                  "--from", "swaks@example.org", "--to", "swaks@example.com",
                                  "--header", "X-Test-Id: %s" % tid, "--body", "swaks over TLS",
                                  "--timeout", "30"],
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            text = out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
            self.assertEqual(out.returncode, 0, text)
            self.assertIn("220 2.0.0 Ready to start TLS", text)
            self.assertIn("TLS started", text)
            self.assertRegex(text, r"<~\s+250 2\.0\.0 Ok: queued as ")
            self.sink.wait_test_id(tid)
        recs = self.sink.by_test_id(tid)
        self.assertEqual([(r["mail_from"], r["rcpt"]) for r in recs],
                         [("swaks@example.org", "swaks@example.com")])
        self.assertIn(b"with ESMTPS", harness.Sink.read_file(recs[0]))

    # -- S7 --------------------------------------------------------------

    def test_s7_long_body_line_kept(self):
        tid = new_test_id("s7line")
        line = (b"x" * 1000 + b".") * 2000 + b"end"  # about 2 MB, no CRLF inside
        self.assertGreater(len(line), 2 * 1000 * 1000)
        message = make_message(tid, "s7@example.org", ["s7@example.com"],
                               body=b"before\r\n" + line + b"\r\n.after\r\n")
        self.assertLess(len(message), CONTENT_SIZE_LIMIT)
        with self.nothing_extra(allowed={tid}):
            conn = self.connect(timeout=30)
            self.start_tx(conn, "s7@example.org", "s7@example.com")
            conn.send(content_stuff(message) + b".\r\n")
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.cmd("QUIT"), 221)
        recs = self.sink.by_test_id(tid)
        self.assertEqual(len(recs), 1, recs)
        data = harness.Sink.read_file(recs[0])
        self.assertEqual(content_bare_line_ends(data), [])
        delivered = content_strip_received(data)
        self.assertEqual(len(delivered), len(message), "body changed length on the way")
        self.assertTrue(delivered == message, "the 2 MB line was not delivered byte-exact")
        self.assertEqual(recs[0]["sha256_after_received"], hashlib.sha256(message).hexdigest())

    def test_s7_huge_headers(self):
        cases = {
            "one 64K header": lambda tid: (b"X-Test-Id: " + tid.encode() + b"\r\nX-Big: " +
                                           b"a" * (64 * 1024) + b"\r\n\r\nbody\r\n", True),
            "100000 header lines": lambda tid: (b"X-Test-Id: " + tid.encode() + b"\r\n" +
                                                b"X-L: v\r\n" * 100000 + b"\r\nbody\r\n", True),
            "folded 50000 times": lambda tid: (b"X-Test-Id: " + tid.encode() + b"\r\nX-Fold: a" +
                                               b"\r\n b" * 50000 + b"\r\n\r\nbody\r\n", True),
            "one 10 MB header": lambda tid: (b"X-Test-Id: " + tid.encode() + b"\r\nX-Huge: " +
                                             b"h" * (10 * 1024 * 1024) + b"\r\n\r\nbody\r\n",
                                             False),
        }
        tids = {label: new_test_id("s7hdr") for label in cases}
        with self.nothing_extra():
            for label, build in cases.items():
                with self.subTest(case=label):
                    data, header_limit = build(tids[label])
                    conn = self.connect(timeout=30)
                    self.start_tx(conn, "s7@example.org", "s7@example.com")
                    started = time.monotonic()
                    conn.send(data + b".\r\n")
                    code, text = conn.reply()
                    self.assertReply((code, text), 552, "5.3.4", "%s: %s" % (label, text))
                    if header_limit:
                        self.assertIn("header", text.lower(), label)
                    self.assertLess(time.monotonic() - started, 30, label)
                    self.assertReply(conn.cmd("QUIT"), 221)
        for label, tid in tids.items():
            self.assertEqual(self.sink.by_test_id(tid), [], label)

    # -- S9 --------------------------------------------------------------

    def test_s9_too_many_recipients(self):
        tid = new_test_id("s9")
        accepted = ["s9-%d@example.com" % i for i in range(CONTENT_RCPT_LIMIT)]
        with self.nothing_extra(allowed={tid}):
            conn = self.connect()
            self.ehlo(conn)
            self.assertReply(conn.cmd("MAIL FROM:<s9@example.org>"), 250, "2.1.0")
            for rcpt in accepted:
                self.assertReply(conn.cmd("RCPT TO:<%s>" % rcpt), 250, "2.1.5")
            self.assertReply(conn.cmd("RCPT TO:<s9-over@example.com>"), 452, "4.5.3")
            self.assertReply(conn.cmd("DATA"), 354)
            conn.send(make_message(tid, "s9@example.org", accepted) + b".\r\n")
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.cmd("QUIT"), 221)
            self.sink.wait_test_id(tid, count=len(accepted))

            # Past the overshoot: every extra RCPT is an error, until 421 and close.
            conn = self.connect()
            self.ehlo(conn)
            self.assertReply(conn.cmd("MAIL FROM:<s9b@example.org>"), 250, "2.1.0")
            for i in range(CONTENT_RCPT_LIMIT):
                self.assertReply(conn.cmd("RCPT TO:<s9b-%d@example.com>" % i), 250, "2.1.5")
            extra = CONTENT_MAX_ERRORS + 30
            conn.send("".join("RCPT TO:<s9b-over-%d@example.com>\r\n" % i for i in range(extra)))
            replies = conn.replies_until_close(limit=extra + 5)
            codes = [c for c, _ in replies]
            self.assertEqual(codes, [452] * CONTENT_MAX_ERRORS + [421], replies)
            self.assertTrue(all("4.5.3" in t for c, t in replies if c == 452), replies)
            self.assertIn("4.7.0", replies[-1][1])
        recs = self.sink.by_test_id(tid)
        self.assertEqual(sorted(r["rcpt"] for r in recs), sorted(accepted))
        self.assertEqual(len(set(r["sha256"] for r in recs)), 1)

    # -- S10 -------------------------------------------------------------

    def test_s10_malformed_sender(self):
        long_local = "a" * 65
        long_domain = ".".join(["d" * 63] * 4) + ".example"  # 264 octets
        cases = [
            ("MAIL FROM:<a@example.org", 501, "5.1.7"),
            ("MAIL FROM:a@example.org>", 501, "5.1.7"),
            ("MAIL FROM:<<a@example.org>>", 501, "5.1.7"),
            ("MAIL FROM:<%s@example.org>" % long_local, 501, "5.1.7"),
            ("MAIL FROM:<a@%s>" % long_domain, 501, "5.1.7"),
            ("MAIL FROM:<a@example.org> FOO=BAR", 555, "5.5.4"),
        ]
        with self.nothing_extra():
            conn = self.connect()
            keywords = self.ehlo(conn)
            for line, code, enhanced in cases:
                with self.subTest(line=line):
                    self.assertReply(conn.cmd(line), code, enhanced)
            # ENVID (RFC 3461) xtext that decodes to CR LF: 501 5.5.4 with DSN, else 555.
            dsn = "DSN" in keywords
            self.assertReply(conn.cmd("MAIL FROM:<a@example.org> ENVID=a+0D+0Ab"),
                             501 if dsn else 555, "5.5.4")
            # Trailing spaces are tolerated (or refused as syntax); either way no state breaks.
            code, text = conn.cmd("MAIL FROM:<s10@example.org>   ")
            self.assertIn((code, ENHANCED_RE.search(text).group(0)),
                          [(250, "2.1.0"), (501, "5.1.7"), (501, "5.5.4")], text)
            self.assertReply(conn.cmd("RSET"), 250, "2.0.0")
            self.assertReply(conn.cmd("QUIT"), 221)

    def test_s10_malformed_recipients(self):
        tid = new_test_id("s10")
        long_local = "r" * 65
        long_domain = ".".join(["e" * 63] * 4) + ".example"
        with self.nothing_extra(allowed={tid}):
            conn = self.connect()
            keywords = self.ehlo(conn)
            dsn = "DSN" in keywords
            self.assertReply(conn.cmd("MAIL FROM:<s10@example.org>"), 250, "2.1.0")
            cases = [
                ("RCPT TO:<a@example.com", 501, "5.1.3"),
                ("RCPT TO:a@example.com>", 501, "5.1.3"),
                ("RCPT TO:<<a@example.com>>", 501, "5.1.3"),
                ("RCPT TO:<>", 501, "5.1.3"),
                ("RCPT TO:<%s@example.com>" % long_local, 501, "5.1.3"),
                ("RCPT TO:<r@%s>" % long_domain, 501, "5.1.3"),
                ("RCPT TO:<foo@example.com> FOO=BAR", 555, "5.5.4"),
                ("RCPT TO:<orcpt@example.com> ORCPT=rfc822;a+0D+0Ab@c", 501 if dsn else 555,
                 "5.5.4"),
                ("RCPT TO:<user@[127.0.0.1]>", 554, "5.7.1"),
                ("RCPT TO:<user@[IPv6:::1]>", 554, "5.7.1"),
                # Source route stripped; relay rights decided on the final address.
                ("RCPT TO:<@example.com:x@victim.example>", 554, "5.7.1"),
                ("RCPT TO:<@a.example,@b.example:route@example.com>", 250, "2.1.5"),
                ('RCPT TO:<"a b\\"c"@example.com>', 250, "2.1.5"),
            ]
            for line, code, enhanced in cases:
                with self.subTest(line=line):
                    self.assertReply(conn.cmd(line), code, enhanced)
            code, text = conn.cmd("RCPT TO:<trailing@example.com>   ")
            self.assertIn((code, ENHANCED_RE.search(text).group(0)),
                          [(250, "2.1.5"), (501, "5.1.3"), (501, "5.5.4")], text)
            want = {"route@example.com", '"a b\\"c"@example.com'}
            if code == 250:
                want.add("trailing@example.com")
            self.assertReply(conn.cmd("DATA"), 354)
            conn.send(make_message(tid, "s10@example.org", sorted(want)) + b".\r\n")
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.cmd("QUIT"), 221)
            self.sink.wait_test_id(tid, count=len(want))
        recs = self.sink.by_test_id(tid)
        self.assertEqual(sorted(r["rcpt"] for r in recs), sorted(want))
        self.assertEqual({r["mail_from"] for r in recs}, {"s10@example.org"})

    # -- S11 -------------------------------------------------------------

    def test_s11_smtputf8(self):
        with self.nothing_extra():
            conn = self.connect()
            keywords = self.ehlo(conn)
            self.assertIn("SMTPUTF8", keywords)
            self.assertReply(conn.cmd("MAIL FROM:<\u00fc@ex.org>"), 553, "5.6.7")
            self.assertReply(conn.cmd("RCPT TO:<s11@example.com>"), 503, "5.5.1")
            # Declared: a UTF-8 path is taken; a C1 control in it is not.
            self.assertReply(conn.cmd("MAIL FROM:<\u00fc@ex.org> SMTPUTF8"), 250, "2.1.0")
            self.assertReply(conn.cmd("RSET"), 250)
            self.assertReply(conn.cmd("MAIL FROM:<a\u0085@ex.org> SMTPUTF8"), 501, "5.1.7")
            # Invalid UTF-8 (overlong "/", a lone surrogate, overlong 3-octet form).
            for raw in [b"MAIL FROM:<\xc0\xaf@ex.org> SMTPUTF8", b"MAIL FROM:<\xed\xa0\x80@ex.org>",
                        b"MAIL FROM:<\xe0\x80\xaf@ex.org> SMTPUTF8"]:
                with self.subTest(line=raw):
                    conn.send(raw + b"\r\n")
                    self.assertReply(conn.reply(), 500, "5.5.2 Error: bad UTF-8 syntax")
            # 8-bit recipients in an open transaction: SMTPUTF8 was not declared.
            self.assertReply(conn.cmd("MAIL FROM:<s11@example.org>"), 250, "2.1.0")
            self.assertReply(conn.cmd("RCPT TO:<\u00fc@example.com>"), 553, "5.6.7")
            conn.send(b"RCPT TO:<\xe0\x80\xaf@example.com>\r\n")
            self.assertReply(conn.reply(), 500, "5.5.2 Error: bad UTF-8 syntax")
            self.assertReply(conn.cmd("DATA"), 503, "5.5.1")
            self.assertReply(conn.cmd("QUIT"), 221)

            # 8-bit octets in EHLO: valid UTF-8 is not a host name (501), invalid
            # UTF-8 is refused as such (500); either way no session is opened.
            for raw, code, enhanced in [("EHLO h\u00e9llo.example".encode("utf-8"), 501, "5.5.4"),
                                        (b"EHLO \xc0\xaf.example", 500, "5.5.2")]:
                with self.subTest(case="8-bit EHLO", line=raw):
                    conn = self.connect()
                    self.assertEqual(conn.greeting[0], 220)
                    conn.send(raw + b"\r\n")
                    self.assertReply(conn.reply(), code, enhanced)
                    self.assertReply(conn.cmd("MAIL FROM:<s11@example.org>"), 503, "5.5.1")
                    self.assertReply(conn.cmd("QUIT"), 221)

    # -- S17 -------------------------------------------------------------

    def test_s17_auth_only_inside_tls(self):
        plain = base64.b64encode(("\0%s\0%s" % (AUTH_USER, AUTH_PASSWORD)).encode()).decode()
        with self.nothing_extra():
            conn = self.connect()
            keywords = self.ehlo(conn)
            self.assertIn("STARTTLS", keywords)
            self.assertFalse([k for k in keywords if k.startswith("AUTH")], keywords)
            self.assertReply(conn.cmd("AUTH PLAIN " + plain), 530, "5.7.0")
            self.assertReply(conn.cmd("AUTH LOGIN"), 530, "5.7.0")
            self.assertReply(conn.cmd("AUTH PLAIN"), 530, "5.7.0")
            # Not authenticated: relaying is still refused.
            self.assertReply(conn.cmd("MAIL FROM:<s17@example.org>"), 250, "2.1.0")
            self.assertReply(conn.cmd("RCPT TO:<x@victim.example>"), 554, "5.7.1")
            self.assertReply(conn.cmd("RSET"), 250, "2.0.0")
            self.assertReply(conn.cmd("STARTTLS"), 220, "2.0.0")
            conn.starttls(self.cert)
            keywords = self.ehlo(conn)
            self.assertIn("AUTH PLAIN LOGIN", keywords)
            self.assertReply(conn.cmd("AUTH PLAIN " + plain), 235, "2.7.0")
            self.assertReply(conn.cmd("QUIT"), 221)

    def test_s17_tls_parameters_raw(self):
        """ServerHello to a TLS 1.2 ClientHello that offers DEFLATE: null compression chosen."""
        with self.nothing_extra():
            conn = self.connect()
            self.ehlo(conn)
            self.assertReply(conn.cmd("STARTTLS"), 220, "2.0.0")
            self.assertEqual(conn.buf, b"")
            conn.sock.sendall(content_client_hello([1, 0]))
            version, cipher, compression = content_server_hello(conn.sock)
            self.assertEqual(version, 0x0303)
            self.assertEqual(compression, 0, "the server chose TLS compression (CRIME)")
            self.assertIn(cipher, (0xC02F, 0xC030, 0xCCA8), "cipher 0x%04x" % cipher)
            conn.close()

    def test_s17_sslscan(self):
        if shutil.which("sslscan") is None:
            self.skipTest("sslscan is not installed (Debian package sslscan)")
        with self.nothing_extra():
            out = subprocess.run(["sslscan", "--starttls-smtp", "--no-colour",
                                  "127.0.0.1:%d" % self.node.smtp_port],
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=90)
            text = out.stdout.decode(errors="replace")
            self.assertEqual(out.returncode, 0, text + out.stderr.decode(errors="replace"))
            for proto in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"):
                self.assertRegex(text, r"(?m)^%s\s+disabled" % re.escape(proto))
            for proto in ("TLSv1.2", "TLSv1.3"):
                self.assertRegex(text, r"(?m)^%s\s+enabled" % re.escape(proto))
            ciphers = content_sslscan_ciphers(text)
            self.assertTrue(ciphers, text)
            for proto, bits, name in ciphers:
                with self.subTest(cipher=name, proto=proto):
                    self.assertIn(proto, ("TLSv1.2", "TLSv1.3"))
                    self.assertGreaterEqual(bits, 128)
                    self.assertIsNone(content_weak_cipher(name))
            # sslscan built without zlib cannot offer compression: the raw ClientHello
            # test (test_s17_tls_parameters_raw) covers it; here it must not be enabled.
            self.assertNotRegex(text, r"(?m)^Compression enabled")
            self.assertRegex(text, r"(?m)^(Compression disabled|OpenSSL version does not support "
                                   r"compression)")
            self.assertNotRegex(text, r"(?mi)^Insecure session renegotiation supported")
            self.assertRegex(text, r"(?m)^(Session renegotiation not supported|"
                                   r"Secure session renegotiation supported)")

    # -- S22 -------------------------------------------------------------

    def bdat(self, conn, data, last=False):
        """bdat - "BDAT n [LAST]" and its n octets in one write (RFC 3030 allows pipelining)."""
        conn.send(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data)

    def test_s22_bdat_delivered(self):
        """A message in BDAT chunks (one CRLF split between two) reaches the sink byte-exact."""
        tid = new_test_id("s22")
        body = (b".\r\n..\r\n.leading dot\r\n\r\n.\r\nBDAT 5 LAST\r\n"
                b"RSET\r\nMAIL FROM:<smuggled@example.org>\r\n" + b"z" * 100000 + b"\r\n")
        message = make_message(tid, "s22@example.org", ["s22@example.com"], body=body)
        cut = message.index(b"\r\n.leading") + 1  # between CR and LF
        with self.nothing_extra(allowed={tid}):
            conn = self.connect()
            keywords = self.ehlo(conn)
            self.assertIn("CHUNKING", keywords)
            self.assertNotIn("BINARYMIME", keywords)
            # MAIL, RCPT and two chunks in one write, then the LAST chunk.
            conn.send(b"MAIL FROM:<s22@example.org> BODY=8BITMIME\r\n"
                      b"RCPT TO:<s22@example.com>\r\n")
            self.bdat(conn, message[:10])
            self.bdat(conn, message[10:cut])
            self.assertReply(conn.reply(), 250, "2.1.0")
            self.assertReply(conn.reply(), 250, "2.1.5")
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.bdat(conn, message[cut:], last=True)
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.cmd("QUIT"), 221, "2.0.0", "extra replies: chunk octets run")
        recs = self.sink.by_test_id(tid)
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual(recs[0]["mail_from"], "s22@example.org")
        data = harness.Sink.read_file(recs[0])
        self.assertTrue(data.startswith(b"Received: from "), data[:80])
        self.assertEqual(content_bare_line_ends(data), [], "bare CR/LF sent downstream")
        self.assertEqual(content_strip_received(data), message, "BDAT message changed")
        self.assertEqual(recs[0]["sha256_after_received"], sha256_hex(message))

    def test_s22_bdat_refused(self):
        """Out of order, mixed with DATA, bad sizes, over the limit, bare LF: nothing queued."""
        tid = new_test_id("s22bad")
        evil = (b"RSET\r\nMAIL FROM:<smuggled@example.org>\r\nRCPT TO:<victim@example.com>\r\n"
                b"DATA\r\nX-Test-Id: " + tid.encode() + b"\r\n\r\nsmuggled\r\n.\r\n")
        with self.nothing_extra():
            conn = self.connect()
            self.ehlo(conn)
            # Before MAIL: the chunk is read and dropped, none of it runs as a command.
            self.bdat(conn, evil)
            self.assertReply(conn.reply(), 503, "5.5.1")
            self.bdat(conn, evil, last=True)
            self.assertReply(conn.reply(), 503, "5.5.1")
            self.assertReply(conn.cmd("NOOP"), 250, "2.0.0", "chunk octets were run")
            # Before RCPT, then DATA after a chunk.
            self.assertReply(conn.cmd("MAIL FROM:<s22@example.org>"), 250, "2.1.0")
            self.bdat(conn, evil)
            self.assertReply(conn.reply(), 503, "5.5.1")
            self.assertReply(conn.cmd("RCPT TO:<s22@example.com>"), 250, "2.1.5")
            self.bdat(conn, evil)
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.cmd("DATA"), 503, "5.5.1")
            self.assertReply(conn.cmd("RSET"), 250, "2.0.0")
            # Bare LF in a chunk: refused after LAST as DATA refuses it.
            self.assertReply(conn.cmd("MAIL FROM:<s22@example.org>"), 250, "2.1.0")
            self.assertReply(conn.cmd("RCPT TO:<s22@example.com>"), 250, "2.1.5")
            self.bdat(conn, b"X-Test-Id: " + tid.encode() + b"\r\n\r\nbare\nlf\r\n", last=True)
            self.assertReply(conn.reply(), 550, "5.5.2")
            # Over message_size_limit: every chunk read, 552 5.3.4 after LAST.
            self.assertReply(conn.cmd("MAIL FROM:<s22@example.org>"), 250, "2.1.0")
            self.assertReply(conn.cmd("RCPT TO:<s22@example.com>"), 250, "2.1.5")
            part = (b"y" * 998 + b"\r\n") * 1500  # 1.5 MB
            for k in range(3):
                self.bdat(conn, part, last=k == 2)
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.reply(), 250, "2.0.0")
            self.assertReply(conn.reply(), 552, "5.3.4")
            self.assertReply(conn.cmd("QUIT"), 221)
            for bad in (b"BDAT +5", b"BDAT 5 ", b"BDAT  5", b"BDAT x", b"BDAT 5 LASTS",
                        b"BDAT 99999999999999999999999", b"BDAT 5\nRSET"):
                with self.subTest(size=bad):
                    conn = self.connect()
                    self.ehlo(conn)
                    conn.send(bad + b"\r\nRSET\r\n")
                    replies = conn.replies_until_close()
                    self.assertEqual(len(replies), 1, replies)
                    self.assertReply(replies[0], 501, "5.5.4")
        self.assertEqual(self.sink.by_test_id(tid), [])


if __name__ == "__main__":
    harness.main()
