#!/usr/bin/python3
"""test_smtp_abuse.py - SECURITY.md section 2 rows S14-S16, S18, S20 and S21 against a real hamrd.

Each class starts its own hamrd (under ASan+UBSan when built so) with a
recording sink as next hop and sends the row's input; every case checks
the replies owed (code and enhanced code) and what reached the sink, and
that the process is still alive. "Nothing extra" uses the barrier pattern
of test_smtp_hostile.py: after the case, a barrier message is sent, and
once it has arrived and the queue is empty, the only new deliveries may be
the barrier and the messages the case itself had accepted.

  S14 SlowClientTest: 200 connections that never say EHLO each get
      "421 4.4.2 <host> Error: timeout exceeded" after command_timeout (3s)
      while another client gets its 220 within 1 s and sends a message;
      hamrd's open fds return to their baseline. A command line trickled one
      byte per second (each byte inside command_timeout) and DATA trickled
      one byte per second (each byte inside data_timeout, [smtpd]
      min_data_rate set) are cut with 421 4.4.2 and nothing is delivered.
  S15 FloodTest (proxy_protocol = on): one PROXY client address over
      client_connection_limit, then over client_connection_rate, gets
      "421 4.7.0 <host> Error: too many connections from <ip>" while
      another address is served. Over max_sessions: a burst larger than the
      socket cap (max_sessions + 64; hamrd briefly stopped while it queues
      in the backlog) makes hamrd stop accepting and still answer every one
      with 421 4.7.0; a 3 s flood is refused (or waits and is served once
      others close), fds stay under the cap, and hamrctl status and
      /health/live keep answering with no leader change. S18: no header,
      garbage, malformed v1 and v2 headers, a header dribbled past
      proxy_timeout and one from a peer outside proxy_networks are closed
      without a greeting (and logged); a PROXY line after the greeting is
      an unknown command.
  S16 AuthTest (STARTTLS + auth_file): 530 before TLS, 535 5.7.8 for a wrong
      password and an unknown user alike, 421 4.7.0 after auth_max_failures,
      500 5.5.6 for a 100 kB response (after 334 or as the initial
      response), 501 5.7.0 for "*", NUL and authzid
      tricks never succeed, a good login (and swaks) may relay, a failed one
      may not (554 5.7.1), and client_auth_rate gives 450 4.7.1.
  S20 BackscatterTest: no DSN for a null sender, one report per failed
      recipient otherwise, no DSN for a failed DSN, and relay_recipients
      rejects unknown users at RCPT with 550 5.1.1, for outside and relay
      clients alike.
  S21 DownstreamTest: a scripted next hop sends a 1 MB reply, 10,000
      continuation lines, a code "2x9", a NUL, a 250 to DATA before the dot,
      or injects replies after its 220 to STARTTLS. The message stays queued
      and deferred with a diagnostic, is never reported delivered, and is
      delivered exactly once when the next hop behaves.

Settings that are newer than the rest ([smtpd] min_data_rate,
client_auth_rate, relay_recipients) are detected with
harness.config_key_supported; a case that needs a missing one fails and
says so.

Run with /usr/bin/python3; HAMRD, HAMRCTL (and HAMR_PASSWD, else the
hamr-passwd next to hamrd) name the binaries.
"""

import base64
import http.client
import itertools
import os
import re
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (RawSMTP, field, make_message, new_test_id, proxy_v1_header,  # noqa: E402
                     send_message, wait_for)

HOST = "127.0.0.1"
NODE_HOST = "node1.relay.test"  # hostname harness.Node gives node 1
TIMEOUT_REPLY = "421 4.4.2 %s Error: timeout exceeded" % NODE_HOST


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def hamr_passwd_path():
    """hamr_passwd_path - $HAMR_PASSWD, else hamr-passwd next to hamrd, else any build."""
    path = os.environ.get("HAMR_PASSWD")
    if path:
        return path
    beside = os.path.join(os.path.dirname(harness.hamrd_path()), "hamr-passwd")
    if os.path.exists(beside):
        return beside
    return harness.harness_binary("HAMR_PASSWD", "hamr-passwd")


def give_to_hamrd(path):
    """give_to_hamrd - make a file hamrd reads its own when the harness runs it as another user."""
    give = getattr(harness, "give_to_run_user", None)
    if give is not None:
        give(path)


def make_cert(directory):
    """make_cert - a fresh self-signed certificate for CN=localhost: (cert path, key path)."""
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=localhost", "-days", "2", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    return cert, key


def make_auth_file(path, users):
    """make_auth_file - an auth_file with one hamr-passwd line per {user: password}."""
    lines = []
    for user, password in users.items():
        out = subprocess.run([hamr_passwd_path(), "-i", "1000", user],
                             input=(password + "\n").encode(), capture_output=True, timeout=30)
        if out.returncode != 0:
            raise AssertionError("hamr-passwd %s failed: %s" % (user, out.stderr.decode()))
        lines.append(out.stdout.decode().strip())
    with open(path, "w") as f:
        f.write("# users for test_smtp_abuse.py\n" + "\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def fd_count(node):
    """fd_count - how many file descriptors hamrd has open (/proc/PID/fd)."""
    return len(os.listdir("/proc/%d/fd" % node.proc.popen.pid))


def b64(data):
    """b64 - base64 of bytes, as text."""
    return base64.b64encode(data).decode("ascii")


def first_line(text):
    """first_line - the last (final) line of a reply text from RawSMTP.reply."""
    return text.split("\n")[-1] if text else text


def sink_events(sink, kind, pattern=""):
    """sink_events - "sink: KIND ..." lines of the sink's output that contain pattern."""
    if sink.proc is None:
        return 0
    return len([line for line in re.findall(r"^sink: %s (.*)$" % re.escape(kind),
                                            sink.proc.log_text(), re.M) if pattern in line])


def delivery_lines(node, qid, status):
    """delivery_lines - hamrd's "delivery id=QID ... status=STATUS" log lines."""
    pat = r"delivery id=%s .*status=%s\b" % (re.escape(qid), re.escape(status))
    return len(re.findall(pat, node.proc.log_text()))


class Client(RawSMTP):
    """Client - RawSMTP from a chosen source address, after an optional PROXY header; STARTTLS."""

    def __init__(self, port, source=None, proxy=None, timeout=10, read_greeting=True):
        self.sock = socket.create_connection((HOST, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.timeout = timeout
        self.buf = b""
        if proxy:
            self.sock.sendall(proxy)
        self.greeting = self.reply() if read_greeting else None

    def starttls(self):
        """starttls - STARTTLS and the handshake (certificate not checked); the 220 reply."""
        code, text = self.cmd("STARTTLS")
        if code != 220:
            return code, text
        if self.buf:
            raise AssertionError("octets after the 220 to STARTTLS: %r" % self.buf)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        return code, text


def collect(socks, deadline, on_data=None):
    """collect - read every socket (non-blocking) until each hits EOF or the deadline.

    Returns ({sock: bytes}, {sock: time of EOF}). on_data(sock, bytes so far)
    is called after each read.
    """
    sel = selectors.DefaultSelector()
    data = {s: b"" for s in socks}
    eof = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    try:
        while len(eof) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    data[s] += chunk
                    if on_data:
                        on_data(s, data[s])
                else:
                    eof[s] = time.monotonic()
                    sel.unregister(s)
    finally:
        sel.close()
    return data, eof


class AbuseCase(harness.HamrTestCase):
    """AbuseCase - the barrier check shared by the classes below."""

    barrier_rcpt = "barrier@example.com"

    def barrier_kw(self):
        """barrier_kw - extra send_message arguments for the barrier (a PROXY header, ...)."""
        return {}

    def nothing_extra(self, allowed=()):
        """nothing_extra - after the block, only the barrier and allowed ids were delivered."""
        return harness.nothing_extra(self, self.node, self.sink, allowed, self.barrier_rcpt,
                                     **self.barrier_kw())

    def connect(self, **kw):
        """connect - a Client to the node, closed when the test ends."""
        conn = Client(self.node.smtp_port, **kw)
        self.addCleanup(conn.close)
        return conn


# ---------------------------------------------------------------------------
# S14 slowloris and slow DATA
# ---------------------------------------------------------------------------

class SlowClientTest(AbuseCase):
    IDLE = 200

    @classmethod
    def setUpEnv(cls):
        smtpd = {"command_timeout": "3s", "data_timeout": "2s",
                 "client_connection_limit": "0", "max_sessions": "500"}
        cls.min_data_rate = harness.config_key_supported("smtpd", "min_data_rate", "1000")
        if cls.min_data_rate:
            smtpd["min_data_rate"] = "1000"
        cls.sink = cls.env.sink().start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port,
                                overrides={"smtpd": smtpd,
                                           "delivery": {"idle_timeout": "500ms"}}).start()

    def test_a_idle_connections(self):
        node = self.node
        tid = new_test_id("s14-probe")
        with self.nothing_extra(allowed={tid}):
            baseline = fd_count(node)
            socks, opened = [], {}
            try:
                for i in range(self.IDLE):
                    s = socket.create_connection((HOST, node.smtp_port), timeout=5)
                    opened[s] = time.monotonic()
                    socks.append(s)
                    if i % 20 == 0:
                        s.sendall(b"EHLO half-a-line")  # a command never finished
                wait_for(lambda: fd_count(node) >= baseline + self.IDLE, 5,
                         "hamrd to accept the %d idle connections" % self.IDLE)
                # While they are open, another client is greeted within 1 s and served.
                t0 = time.monotonic()
                probe = Client(node.smtp_port, timeout=5)
                greet_s = time.monotonic() - t0
                fds_at_greeting = fd_count(node)
                probe.close()
                self.assertEqual(probe.greeting[0], 220, probe.greeting)
                self.assertLess(greet_s, 1.0, "greeting took %.2fs with %d idle sessions"
                                % (greet_s, self.IDLE))
                res = send_message(node.smtp_port, "probe@example.org", ["probe@example.com"],
                                   make_message(tid, "probe@example.org", ["probe@example.com"]),
                                   timeout=10)
                self.assertReply(res, 250, "2.0.0")
                self.assertGreaterEqual(fds_at_greeting, baseline + self.IDLE,
                                        "idle sessions were gone before the probe was greeted")

                got_421 = {}

                def on_data(s, data):
                    if s not in got_421 and b"\r\n421" in data:
                        got_421[s] = time.monotonic()

                data, eof = collect(socks, time.monotonic() + 20, on_data)
                self.assertEqual(len(eof), self.IDLE, "%d of %d idle connections still open "
                                 "after 20s" % (self.IDLE - len(eof), self.IDLE))
                for s in socks:
                    lines = data[s].decode("utf-8", "replace").split("\r\n")
                    self.assertEqual(len(lines), 3, data[s])
                    self.assertTrue(lines[0].startswith("220 "), data[s])
                    self.assertEqual(lines[1], TIMEOUT_REPLY)
                    self.assertEqual(lines[2], "")
                    waited = got_421[s] - opened[s]
                    self.assertGreater(waited, 2.5, "cut after %.2fs, before command_timeout"
                                       % waited)
                    self.assertLess(waited, 10.0)
            finally:
                for s in socks:
                    s.close()

            def back_to_baseline():
                node.check_alive()
                return fd_count(node) <= baseline

            wait_for(back_to_baseline, 15, "hamrd's fds to return to %d (now %d)"
                     % (baseline, fd_count(node)), interval=0.1)
        self.assertEqual(len(self.sink.by_test_id(tid)), 1)

    def trickle(self, conn, payload, interval, bound):
        """trickle - send payload one octet per interval until a reply or bound seconds.

        Returns (reply lines received, seconds from the first octet to the reply, octets sent).
        """
        conn.sock.setblocking(False)
        start = time.monotonic()
        got = b""
        sent = 0
        sel = selectors.DefaultSelector()
        sel.register(conn.sock, selectors.EVENT_READ)
        try:
            while time.monotonic() - start < bound:
                if b"\r\n" not in got and sent < len(payload):
                    try:
                        conn.sock.send(payload[sent:sent + 1])
                        sent += 1
                    except OSError:
                        pass
                tick = time.monotonic() + interval
                while time.monotonic() < tick:
                    if not sel.select(timeout=max(0.0, tick - time.monotonic())):
                        continue
                    try:
                        chunk = conn.sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        return got, time.monotonic() - start, sent, True
                    got += chunk
                    if b"\r\n" in got:
                        break
                if b"\r\n" in got:
                    # Reply complete: wait (bounded) for the close that must follow 421.
                    conn.sock.settimeout(5)
                    try:
                        more = conn.sock.recv(4096)
                    except OSError:
                        more = b""
                    return got + more, time.monotonic() - start, sent, more == b""
        finally:
            sel.close()
        return got, time.monotonic() - start, sent, False

    def test_b_command_trickle(self):
        # S14 "a client sending one byte every 9 s" (under a 10 s timeout),
        # scaled: one byte a second under command_timeout = 3s. Each byte is
        # inside the timeout; the command as a whole is not.
        with self.nothing_extra():
            conn = self.connect()
            self.assertEqual(conn.greeting[0], 220)
            got, took, sent, closed = self.trickle(conn, b"EHLO " + b"t" * 100 + b"\r\n", 1.0, 10)
            self.assertTrue(got, "no reply after %.1fs of one command octet per second (%d sent, "
                            "command_timeout 3s): the timeout restarts on every octet"
                            % (took, sent))
            self.assertEqual(got.decode("utf-8", "replace").split("\r\n")[0], TIMEOUT_REPLY)
            self.assertTrue(closed, "the connection stayed open after 421")
            self.assertLess(took, 7.0)

    def test_c_data_trickle(self):
        if not self.min_data_rate:
            self.fail("hamrd does not accept [smtpd] min_data_rate (SECURITY.md S14: DATA is "
                      "cut when its rate falls under the minimum); this case needs it")
        tid = new_test_id("s14-data")
        with self.nothing_extra():
            conn = self.connect()
            self.assertEqual(conn.cmd("EHLO client.test")[0], 250)
            self.assertReply(conn.cmd("MAIL FROM:<slow@example.org>"), 250)
            self.assertReply(conn.cmd("RCPT TO:<slow@example.com>"), 250)
            self.assertReply(conn.cmd("DATA"), 354)
            body = make_message(tid, "slow@example.org", ["slow@example.com"]) + b".\r\n"
            # One octet a second: every read comes well inside data_timeout
            # (2s); the rate (1 B/s) is far under min_data_rate (1000 B/s),
            # so DATA must end at about data_timeout + octets/1000 s.
            got, took, sent, closed = self.trickle(conn, body, 1.0, 12)
            self.assertTrue(got, "DATA trickled at 1 B/s for %.1fs (%d octets) was not cut"
                            % (took, sent))
            self.assertEqual(got.decode("utf-8", "replace").split("\r\n")[0], TIMEOUT_REPLY)
            self.assertTrue(closed, "the connection stayed open after 421")
            self.assertGreater(took, 1.0, "cut after %.2fs, sooner than data_timeout" % took)
            self.assertLess(took, 7.0)
            self.assertLess(sent, len(body), "the whole message went through")
        self.assertEqual(self.sink.by_test_id(tid), [])


# ---------------------------------------------------------------------------
# S15 connection flood through PROXY
# ---------------------------------------------------------------------------

class FloodTest(AbuseCase):
    MAX_SESSIONS = 8
    CONN_LIMIT = 3
    CONN_RATE = 10
    REFUSING_MAX = 64  # sockets being refused past max_sessions (README: max_sessions + 64)
    BURST = 120  # under hamrd's listen backlog (128)
    PROXY_TIMEOUT = 2  # seconds for a whole PROXY header

    _addrs = itertools.count(1)

    @classmethod
    def fresh_addr(cls):
        """fresh_addr - a client address no other connection of this class named."""
        n = next(cls._addrs)
        return "10.200.%d.%d" % (n // 250, n % 250 + 1)

    @classmethod
    def setUpEnv(cls):
        cls.http_port = harness.free_port()
        smtpd = {"proxy_protocol": "on", "proxy_networks": "127.0.0.1/32",
                 "proxy_timeout": "%ds" % cls.PROXY_TIMEOUT,
                 "client_connection_limit": str(cls.CONN_LIMIT),
                 "client_connection_rate": str(cls.CONN_RATE),
                 "max_sessions": str(cls.MAX_SESSIONS)}
        cls.sink = cls.env.sink().start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port,
                                overrides={"smtpd": smtpd,
                                           "listen": {"http": "%s:%d" % (HOST, cls.http_port)},
                                           "delivery": {"idle_timeout": "500ms"}})
        cls.node.start(wait=False)
        node = cls.node

        def ready():  # harness wait_ready speaks without a PROXY header
            node.check_alive()
            if node.state() != "leader":
                return False
            conn = Client(node.smtp_port, proxy=proxy_v1_header(cls.fresh_addr()), timeout=5)
            try:
                if conn.greeting[0] != 220 or conn.cmd("EHLO probe.test")[0] != 250:
                    return False
                ok = conn.cmd("MAIL FROM:<probe@example.org>")[0] == 250
                conn.cmd("QUIT")
                return ok
            finally:
                conn.close()

        wait_for(ready, 45, "node1 to become leader and greet behind PROXY", interval=0.2)

    def barrier_kw(self):
        return {"proxy_header": proxy_v1_header(self.fresh_addr())}

    def refused_text(self, addr=None):
        """refused_text - the 421 owed past a connection limit (per client: with the address)."""
        text = "421 4.7.0 %s Error: too many connections" % NODE_HOST
        return text + (" from %s" % addr if addr else "")

    def proxied(self, addr, **kw):
        """proxied - a connection whose PROXY header names client addr."""
        return self.connect(proxy=proxy_v1_header(addr), **kw)

    def health(self):
        """health - the HTTP status of GET /health/live."""
        conn = http.client.HTTPConnection(HOST, self.http_port, timeout=5)
        try:
            conn.request("GET", "/health/live")
            return conn.getresponse().status
        finally:
            conn.close()

    def test_a_per_client_count(self):
        flooder, other = "10.1.1.1", "10.2.2.2"
        tid = new_test_id("s15-other")
        with self.nothing_extra(allowed={tid}):
            held = []
            for _ in range(self.CONN_LIMIT):
                c = self.proxied(flooder)
                self.assertEqual(c.greeting[0], 220, c.greeting)
                self.assertEqual(c.cmd("EHLO flood.test")[0], 250)
                held.append(c)
            # 20 more from the same client, 4 at a time (under max_sessions).
            for _ in range(5):
                batch = [self.proxied(flooder, read_greeting=False) for _ in range(4)]
                for c in batch:
                    replies = c.replies_until_close()
                    self.assertEqual(replies, [(421, self.refused_text(flooder))])
            # Another client address is served while the flood goes on.
            res = send_message(self.node.smtp_port, "other@example.org", ["other@example.com"],
                               make_message(tid, "other@example.org", ["other@example.com"]),
                               proxy_header=proxy_v1_header(other), timeout=15)
            self.assertReply(res, 250, "2.0.0")
            for c in held:  # the sessions the client already had are unaffected
                self.assertReply(c.cmd("NOOP"), 250)
                self.assertReply(c.cmd("QUIT"), 221)
        self.assertEqual(len(self.sink.by_test_id(tid)), 1)

    def test_b_per_client_rate(self):
        addr = "10.4.4.4"
        with self.nothing_extra():
            for i in range(self.CONN_RATE):
                c = self.proxied(addr)
                self.assertEqual(c.greeting[0], 220, "connection %d: %r" % (i + 1, c.greeting))
                self.assertReply(c.cmd("QUIT"), 221)
                c.close()
            c = self.proxied(addr, read_greeting=False)
            self.assertEqual(c.replies_until_close(), [(421, self.refused_text(addr))])
            other = self.proxied("10.4.4.5")
            self.assertEqual(other.greeting[0], 220, other.greeting)
            self.assertReply(other.cmd("QUIT"), 221)

    def flood(self, results, stop_after):
        """flood - waves of connections (each from a new PROXY address) for stop_after seconds."""
        end = time.monotonic() + stop_after
        while time.monotonic() < end and len(results["done"]) < 600:
            wave = []
            for _ in range(60):
                try:
                    s = socket.create_connection((HOST, self.node.smtp_port), timeout=3)
                    s.sendall(proxy_v1_header(self.fresh_addr()))
                    wave.append(s)
                except OSError as e:
                    results["connect_errors"].append(repr(e))
            data, eof = collect(wave, time.monotonic() + 5)
            for s in wave:
                if s in eof:
                    results["done"].append(data[s])
                    s.close()
                else:
                    results["waiting"].append((s, data[s]))

    def burst_over_socket_cap(self):
        """burst_over_socket_cap - more waiting connections at once than the socket cap allows.

        hamrd is stopped (SIGSTOP) while BURST connections complete in the
        kernel backlog, then continued: it finds them all at once, must stop
        accepting at max_sessions + 64 sockets and take the rest as the
        refused ones close. Every one of them gets the 421.
        """
        node = self.node
        pid = node.proc.popen.pid
        burst = []
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(self.BURST):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex((HOST, node.smtp_port))
                burst.append(s)
            sel = selectors.DefaultSelector()
            for s in burst:
                sel.register(s, selectors.EVENT_WRITE)
            connected = set()
            deadline = time.monotonic() + 5
            while len(connected) < len(burst) and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.1):
                    connected.add(key.fileobj)
                    sel.unregister(key.fileobj)
            sel.close()
        finally:
            os.kill(pid, signal.SIGCONT)
        try:
            self.assertEqual(len(connected), len(burst), "connections did not complete")
            data, eof = collect(burst, time.monotonic() + 20)
            self.assertEqual(len(eof), len(burst), "burst connections left open")
            for s in burst:
                self.assertEqual(data[s].decode("utf-8", "replace"), self.refused_text() + "\r\n")
        finally:
            for s in burst:
                s.close()
        wait_for(lambda: "smtpd accept paused" in node.proc.log_text(), 5,
                 "hamrd to stop accepting at the socket cap (log: smtpd accept paused)")

    def test_c_global_cap(self):
        tid = new_test_id("s15-after")
        node = self.node
        with self.nothing_extra(allowed={tid}):
            baseline = fd_count(node)
            term = int(field(node.status(), "term", 0))
            held = []
            for _ in range(self.MAX_SESSIONS):
                c = self.proxied(self.fresh_addr())
                self.assertEqual(c.greeting[0], 220, c.greeting)
                held.append(c)
            self.burst_over_socket_cap()
            results = {"done": [], "waiting": [], "connect_errors": []}
            flooder = threading.Thread(target=self.flood, args=(results, 3.0), daemon=True)
            flooder.start()
            max_fds, ctl_worst, checks = 0, 0.0, 0
            try:
                while flooder.is_alive() or checks < 3:
                    t0 = time.monotonic()
                    self.assertEqual(node.state(), "leader")
                    self.assertEqual(self.health(), 200)
                    ctl_worst = max(ctl_worst, time.monotonic() - t0)
                    max_fds = max(max_fds, fd_count(node))
                    checks += 1
                    flooder.join(0.05)
            finally:
                flooder.join(30)
            self.assertFalse(flooder.is_alive(), "the flood did not end")
            self.assertLess(ctl_worst, 3.0, "hamrctl status + /health took %.2fs in the flood"
                            % ctl_worst)
            self.assertGreater(len(results["done"]) + len(results["waiting"]), 100)
            self.assertLessEqual(max_fds, baseline + self.MAX_SESSIONS + self.REFUSING_MAX + 8,
                                 "accepted sockets went past the cap")
            for data in results["done"]:
                text = data.decode("utf-8", "replace")
                self.assertFalse(text.startswith("220"), "a session past max_sessions: %r" % text)
                self.assertEqual(text, self.refused_text() + "\r\n")
            for _, data in results["waiting"]:
                self.assertEqual(data, b"", "a waiting connection got %r" % data)
            self.assertEqual(int(field(node.status(), "term", 0)), term,
                             "the SMTP flood caused an election")
            for c in held:
                self.assertReply(c.cmd("NOOP"), 250)
                self.assertReply(c.cmd("QUIT"), 221)
                c.close()
            # Back-pressure: a connection that waited is served once others closed.
            waiting = [s for s, _ in results["waiting"]]

            def hang_up_after_reply(s, data):
                if data.endswith(b"\r\n"):
                    s.shutdown(socket.SHUT_WR)

            try:
                data, eof = collect(waiting, time.monotonic() + 10, hang_up_after_reply)
                for s in waiting:
                    text = data[s].decode("utf-8", "replace")
                    self.assertTrue(text.startswith("220 ") or
                                    text == self.refused_text() + "\r\n", text)
            finally:
                for s in waiting:
                    s.close()
            res = send_message(node.smtp_port, "after@example.org", ["after@example.com"],
                               make_message(tid, "after@example.org", ["after@example.com"]),
                               proxy_header=proxy_v1_header(self.fresh_addr()), timeout=15)
            self.assertReply(res, 250, "2.0.0")

            def back_to_baseline():
                node.check_alive()
                return fd_count(node) <= baseline

            wait_for(back_to_baseline, 15, "hamrd's fds to return to %d" % baseline)
        self.assertEqual(len(self.sink.by_test_id(tid)), 1)
        paused = len(re.findall(r"smtpd accept paused", node.proc.log_text()))
        sys.stderr.write("\n[s15] flood: %d refused, %d waited, accept paused %d times, "
                         "max fds %d (baseline %d), worst ctl+health %.2fs\n"
                         % (len(results["done"]), len(results["waiting"]), paused, max_fds,
                            baseline, ctl_worst))

    def refused_without_greeting(self, first, dribble=None, source=None):
        """refused_without_greeting - hamrd closes a connection that starts with first unanswered.

        dribble: seconds between single octets of first (else one write).
        Returns the seconds from connect to the close.
        """
        t0 = time.monotonic()
        sock = socket.create_connection((HOST, self.node.smtp_port), timeout=10,
                                        source_address=(source, 0) if source else None)
        self.addCleanup(sock.close)
        try:
            if dribble is None:
                sock.sendall(first)
            else:
                for i in range(len(first)):
                    sock.sendall(first[i:i + 1])
                    time.sleep(dribble)
        except OSError:
            pass  # closed while we were still writing: refused all the same
        data, eof = collect([sock], time.monotonic() + 10)
        self.assertIn(sock, eof, "hamrd did not close the connection (input %r)" % first[:40])
        self.assertEqual(data[sock], b"", "hamrd answered %r to %r" % (data[sock][:80], first[:40]))
        return eof[sock] - t0

    def test_d_proxy_abuse(self):
        """S18: bad, incomplete, late and untrusted PROXY headers: closed, never a 220."""
        sig = b"\r\n\r\n\x00\r\nQUIT\n"
        v2_tcp4 = bytes([0x21, 0x11, 0x00, 0x0c]) + bytes([10, 0, 0, 1, 127, 0, 0, 1]) + b"\x9c\x40\x00\x19"
        cases = [
            ("no header", b"EHLO client.test\r\n"),
            ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            ("fields missing", b"PROXY TCP4 1.2.3.4\r\n"),
            ("port over 65535", b"PROXY TCP4 1.2.3.4 127.0.0.1 99999 25\r\n"),
            ("port with leading zero", b"PROXY TCP4 1.2.3.4 127.0.0.1 0040 25\r\n"),
            ("v1 line over 107 octets", b"PROXY TCP4 " + b"1" * 120 + b"\r\n"),
            ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n"),
            ("v2 wrong signature", b"\r\n\r\n\x00\r\nQUIX\n" + v2_tcp4),
            ("v2 wrong version", sig + bytes([0x31]) + v2_tcp4[1:]),
            ("v2 wrong family", sig + bytes([0x21, 0x71]) + v2_tcp4[2:]),
            ("v2 length too short", sig + bytes([0x21, 0x11, 0x00, 0x04]) + v2_tcp4[4:8]),
        ]
        with self.nothing_extra():
            for label, first in cases:
                with self.subTest(case=label):
                    self.refused_without_greeting(first)
            # Dribbled one octet every 0.5 s: cut at proxy_timeout, still no greeting.
            took = self.refused_without_greeting(proxy_v1_header(self.fresh_addr()), dribble=0.5)
            self.assertLess(took, self.PROXY_TIMEOUT + 3, "the header wait is bounded")
            # A valid header from a peer that is not a balancer (proxy_networks is 127.0.0.1/32).
            self.refused_without_greeting(proxy_v1_header(self.fresh_addr()), source="127.0.0.2")
            # After the greeting a PROXY line is an ordinary unknown command.
            conn = self.proxied(self.fresh_addr())
            self.assertEqual(conn.greeting[0], 220, conn.greeting)
            code, text = conn.cmd(proxy_v1_header(self.fresh_addr()).decode().strip())
            self.assertIn(code, (500, 502), text)
            self.assertIn("5.5.2", text)
            self.assertReply(conn.cmd("QUIT"), 221)
        log = self.node.proc.log_text()
        self.assertGreaterEqual(len(re.findall(r"smtpd proxy refuse", log)), len(cases) + 2)


# ---------------------------------------------------------------------------
# S16 AUTH
# ---------------------------------------------------------------------------

GOOD_PW = "correct horse battery"
AUTH_FAILED = (535, "535 5.7.8 Error: authentication failed")


class AuthTest(AbuseCase):
    _sources = itertools.count(20)

    @classmethod
    def setUpEnv(cls):
        cert, key = make_cert(os.path.join(cls.env.dir, "tls"))
        auth = make_auth_file(os.path.join(cls.env.dir, "auth_users"), {"alice": GOOD_PW})
        for path in (cert, key, auth):
            give_to_hamrd(path)
        smtpd = {"relay_networks": "10.0.0.0/8", "tls_cert_file": cert, "tls_key_file": key,
                 "auth_file": auth, "auth_max_failures": "3"}
        cls.auth_rate = harness.config_key_supported("smtpd", "client_auth_rate", "5")
        if cls.auth_rate:
            smtpd["client_auth_rate"] = "5"
        cls.sink = cls.env.sink().start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port, overrides={"smtpd": smtpd}).start()

    def source(self):
        """source - a loopback address no other session of this class used (own AUTH budget)."""
        n = next(self._sources)
        return "127.0.%d.%d" % (n // 250, n % 250 + 1)

    def tls_session(self, source=None):
        """tls_session - greeted, EHLO, STARTTLS, EHLO again; AUTH offered only inside TLS."""
        c = self.connect(source=source or self.source())
        self.assertEqual(c.greeting[0], 220, c.greeting)
        code, text = c.cmd("EHLO client.test")
        self.assertEqual(code, 250, text)
        self.assertIn("STARTTLS", text)
        self.assertNotRegex(text, r"(?m)^250[- ]AUTH", "AUTH offered before TLS")
        self.assertReply(c.starttls(), 220, "2.0.0")
        code, text = c.cmd("EHLO client.test")
        self.assertEqual(code, 250, text)
        self.assertRegex(text, r"(?m)^250[- ]AUTH PLAIN LOGIN")
        return c

    def assertNoRelay(self, c):
        """assertNoRelay - the session may not send to an outside domain."""
        self.assertReply(c.cmd("MAIL FROM:<x@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<victim@outside.example>"), 554, "5.7.1")
        self.assertReply(c.cmd("RSET"), 250)

    def plain(self, c, authz, user, password):
        """plain - AUTH PLAIN with an initial response authz NUL user NUL password."""
        return c.cmd("AUTH PLAIN " + b64(b"\0".join([authz, user, password])))

    def test_a_auth_before_starttls(self):
        with self.nothing_extra():
            c = self.connect(source=self.source())
            code, text = c.cmd("EHLO client.test")
            self.assertEqual(code, 250)
            self.assertNotRegex(text, r"(?m)^250[- ]AUTH")
            good = b64(b"\0alice\0" + GOOD_PW.encode())
            self.assertEqual(c.cmd("AUTH PLAIN " + good),
                             (530, "530 5.7.0 Must issue a STARTTLS command first"))
            self.assertReply(c.cmd("AUTH LOGIN"), 530, "5.7.0")
            self.assertNoRelay(c)
            self.assertReply(c.cmd("QUIT"), 221)

    def test_b_wrong_password_then_421(self):
        with self.nothing_extra():
            c = self.tls_session()
            self.assertEqual(self.plain(c, b"", b"alice", b"wrong-1"), AUTH_FAILED)
            self.assertNoRelay(c)
            self.assertEqual(self.plain(c, b"", b"alice", b"wrong-2"), AUTH_FAILED)
            self.assertEqual(self.plain(c, b"", b"alice", b"wrong-3"), AUTH_FAILED)
            rest = c.replies_until_close()
            self.assertEqual(len(rest), 1, rest)
            self.assertReply(rest[0], 421, "4.7.0")
            self.assertIn(NODE_HOST, rest[0][1])

    def test_c_unknown_user_same_reply(self):
        with self.nothing_extra():
            replies = {}
            for user in (b"alice", b"mallory"):
                c = self.tls_session()
                replies["plain", user] = self.plain(c, b"", user, b"not-the-password")
                self.assertReply(c.cmd("AUTH LOGIN"), 334)
                self.assertEqual(c.cmd(b64(user)), (334, "334 UGFzc3dvcmQ6"))
                replies["login", user] = c.cmd(b64(b"not-the-password"))
                self.assertNoRelay(c)
            for mech in ("plain", "login"):
                self.assertEqual(replies[mech, b"alice"], AUTH_FAILED)
                self.assertEqual(replies[mech, b"mallory"], replies[mech, b"alice"],
                                 "an unknown user is answered differently")

    def test_d_overlong_response(self):
        with self.nothing_extra():
            c = self.tls_session()
            self.assertEqual(c.cmd("AUTH PLAIN"), (334, "334 "))
            self.assertReply(c.cmd("A" * 100000), 500, "5.5.6")
            self.assertReply(c.cmd("NOOP"), 250)  # still in step: the tail ran as nothing
            self.assertNoRelay(c)

    def test_d_overlong_initial_response(self):
        # The same 100 kB as the initial response on the AUTH line itself:
        # still an over-long AUTH response (RFC 4954 4: 500 5.5.6).
        with self.nothing_extra():
            c = self.tls_session()
            self.assertReply(c.cmd("AUTH PLAIN " + "A" * 100000), 500, "5.5.6")
            self.assertReply(c.cmd("NOOP"), 250)
            self.assertNoRelay(c)

    def test_e_cancel(self):
        with self.nothing_extra():
            c = self.tls_session()
            aborted = (501, "501 5.7.0 Authentication aborted")
            self.assertEqual(c.cmd("AUTH PLAIN"), (334, "334 "))
            self.assertEqual(c.cmd("*"), aborted)
            self.assertEqual(c.cmd("AUTH LOGIN"), (334, "334 VXNlcm5hbWU6"))
            self.assertEqual(c.cmd("*"), aborted)
            self.assertEqual(c.cmd("AUTH LOGIN"), (334, "334 VXNlcm5hbWU6"))
            self.assertEqual(c.cmd(b64(b"alice")), (334, "334 UGFzc3dvcmQ6"))
            self.assertEqual(c.cmd("*"), aborted)
            self.assertNoRelay(c)
            self.assertReply(c.cmd("QUIT"), 221)

    def test_f_nul_and_authzid_tricks(self):
        pw = GOOD_PW.encode()
        plain = [
            b"alice\0\0" + pw,  # authzid alice, empty authcid
            b"\0\0" + pw,  # everything empty but the password
            b"bob\0alice\0" + pw,  # acting for someone else
            b"\0alice\0" + pw + b"\0",  # trailing NUL
            b"\0alice\0" + pw + b"\0extra",
            b"\0alice\0\0" + pw,  # password after an extra NUL
            b"\0ali\0ce\0" + pw,  # NUL inside the user name
            b"\0alice\0",  # empty password
            b"\0alice",  # one NUL only
            b"alice" + pw,  # no NUL at all
            b"\0alice\0" + pw[:-1],  # near miss
            b"\0\0\0",
            b"",
        ]
        with self.nothing_extra():
            for payload in plain:
                with self.subTest(payload=payload):
                    c = self.tls_session()
                    code, text = c.cmd("AUTH PLAIN " + (b64(payload) if payload else "="))
                    self.assertIn(code, (535, 501), text)
                    if code == 535:
                        self.assertEqual((code, text), AUTH_FAILED)
                    self.assertNoRelay(c)
                    c.close()
            for user in (b"alice\0", b"\0alice", b"al\0ice"):
                with self.subTest(login_user=user):
                    c = self.tls_session()
                    self.assertReply(c.cmd("AUTH LOGIN"), 334)
                    code, text = c.cmd(b64(user))
                    if code == 334:
                        code, text = c.cmd(b64(pw))
                    self.assertIn(code, (535, 501), text)
                    self.assertNoRelay(c)
                    c.close()
            # A response in the 334 step with the NUL trick, and "=" (empty).
            c = self.tls_session()
            self.assertEqual(c.cmd("AUTH PLAIN"), (334, "334 "))
            code, text = c.cmd(b64(b"bob\0alice\0" + pw))
            self.assertIn(code, (535, 501), text)
            self.assertEqual(c.cmd("AUTH PLAIN"), (334, "334 "))
            code, text = c.cmd("=")
            self.assertIn(code, (535, 501), text)
            self.assertNoRelay(c)

    def test_g_good_login_relays_failed_does_not(self):
        tid_plain, tid_login = new_test_id("s16-plain"), new_test_id("s16-login")
        with self.nothing_extra(allowed={tid_plain, tid_login}):
            c = self.tls_session()
            self.assertEqual(self.plain(c, b"", b"alice", GOOD_PW.encode()),
                             (235, "235 2.7.0 Authentication successful"))
            self.send_outside(c, tid_plain)
            self.assertReply(c.cmd("QUIT"), 221)

            c = self.tls_session()
            self.assertReply(c.cmd("AUTH LOGIN"), 334)
            self.assertReply(c.cmd(b64(b"alice")), 334)
            self.assertReply(c.cmd(b64(GOOD_PW.encode())), 235, "2.7.0")
            self.send_outside(c, tid_login)

            c = self.tls_session()
            self.assertEqual(self.plain(c, b"", b"alice", b"bad"), AUTH_FAILED)
            self.assertReply(c.cmd("MAIL FROM:<alice@example.org>"), 250)
            self.assertReply(c.cmd("RCPT TO:<friend@outside.example>"), 554, "5.7.1")
            self.assertReply(c.cmd("DATA"), 503, "5.5.1")
        for tid in (tid_plain, tid_login):
            recs = self.sink.by_test_id(tid)
            self.assertEqual([r["rcpt"] for r in recs], ["friend@outside.example"])
            self.assertIn(b"ESMTPSA", self.sink.read_file(recs[0]).split(b"\r\n\r\n")[0])

    def send_outside(self, c, tid):
        """send_outside - one message to an outside domain in session c; 250 required."""
        self.assertReply(c.cmd("MAIL FROM:<alice@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<friend@outside.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(make_message(tid, "alice@example.org", ["friend@outside.example"]) + b".\r\n")
        self.assertReply(c.reply(), 250, "2.0.0")

    def test_h_auth_rate(self):
        if not self.auth_rate:
            self.fail("hamrd does not accept [smtpd] client_auth_rate (SECURITY.md S16: over "
                      "the rate, 450 4.7.1 Error: too many AUTH commands from <ip>); this case "
                      "needs it")
        over = (450, "450 4.7.1 Error: too many AUTH commands from 127.0.0.1")
        with self.nothing_extra():
            # Five AUTH commands from 127.0.0.1 within the minute, two per
            # session (under auth_max_failures), then the sixth: the right
            # password must not help.
            for n_fail in (2, 2, 1):
                c = self.tls_session(source="127.0.0.1")
                for _ in range(n_fail):
                    self.assertEqual(self.plain(c, b"", b"alice", b"wrong"), AUTH_FAILED)
                if n_fail == 1:
                    code, text = self.plain(c, b"", b"alice", GOOD_PW.encode())
                    self.assertEqual(code, over[0], text)
                    self.assertIn("4.7.1", text)
                    self.assertEqual((code, first_line(text)), over)
                    self.assertNoRelay(c)
                c.close()
            c = self.tls_session(source="127.0.0.1")
            self.assertEqual(self.plain(c, b"", b"alice", GOOD_PW.encode()), over)
            self.assertNoRelay(c)
            # Another client is not affected.
            c = self.tls_session()
            self.assertReply(self.plain(c, b"", b"alice", GOOD_PW.encode()), 235, "2.7.0")

    def test_i_swaks(self):
        tid = new_test_id("s16-swaks")
        with self.nothing_extra(allowed={tid}):
            out = subprocess.run(
                ["swaks", "--server", HOST, "--port", str(self.node.smtp_port),
                 "--local-interface", self.source(), "--tls", "--auth", "PLAIN",
                 "--auth-user", "alice", "--auth-password", GOOD_PW,
                 "--from", "alice@example.org", "--to", "friend@outside.example",
                 "--helo", "swaks.test", "--header", "X-Test-Id: %s" % tid,
                 "--timeout", "20"],
                capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
            text = out.stdout.decode("utf-8", "replace")
            self.assertEqual(out.returncode, 0, text + out.stderr.decode("utf-8", "replace"))
            self.assertRegex(text, r"(?m)^<~  235 2\.7\.0")
            self.sink.wait_test_id(tid)
        self.assertEqual([r["rcpt"] for r in self.sink.by_test_id(tid)],
                         ["friend@outside.example"])


# ---------------------------------------------------------------------------
# S20 backscatter
# ---------------------------------------------------------------------------

class BackscatterTest(AbuseCase):
    barrier_rcpt = "barrier@far.example"

    @classmethod
    def setUpEnv(cls):
        cls.rr_path = os.path.join(cls.env.dir, "relay_recipients")
        with open(cls.rr_path, "w") as f:
            f.write("# recipients we accept for our relay domains\n"
                    "known@example.com\n@wild.example\n")
        give_to_hamrd(cls.rr_path)
        smtpd = {"relay_networks": "127.0.0.1/32", "relay_domains": "example.com, wild.example"}
        cls.relay_recipients = harness.config_key_supported("smtpd", "relay_recipients",
                                                            cls.rr_path)
        if cls.relay_recipients:
            smtpd["relay_recipients"] = cls.rr_path
        cls.sink = cls.env.sink(reject_rcpt=r"^nouser").start()
        cls.node = cls.env.node(relayhost_port=cls.sink.port, overrides={"smtpd": smtpd}).start()

    def dsns(self, records):
        """dsns - the records from the null sender."""
        return [r for r in records if r["mail_from"] == ""]

    def test_a_null_sender_no_dsn(self):
        with self.nothing_extra():
            rejects = sink_events(self.sink, "reject_rcpt")
            for i in range(3):
                tid = new_test_id("s20-null")
                rcpts = ["nouser%d@far.example" % i]
                res = self.node.send("", rcpts, make_message(tid, "", rcpts))
                self.assertReply(res, 250, "2.0.0")
            wait_for(lambda: sink_events(self.sink, "reject_rcpt") >= rejects + 3, 30,
                     "the three attempts to fail with 550")
        # nothing_extra: no DSN, nothing else.

    def test_b_one_report_per_failed_rcpt(self):
        sender = "storm@example.org"
        failed, tids = [], []
        before = len(self.sink.records())
        for m in range(3):
            tid = new_test_id("s20-storm")
            rcpts = ["nouser-a%d@far.example" % m, "nouser-b%d@far.example" % m,
                     "fine%d@far.example" % m]
            res = self.node.send(sender, rcpts, make_message(tid, sender, rcpts))
            self.assertReply(res, 250, "2.0.0")
            failed += rcpts[:2]
            tids.append(tid)
        for tid in tids:
            self.sink.wait_test_id(tid, timeout=40)
        with self.nothing_extra(allowed=set(tids) | {None}):
            pass  # everything due has been tried once the barrier is through
        new = self.sink.records()[before:]
        dsns = [r for r in self.dsns(new) if r["rcpt"] == sender]
        self.assertEqual(len(self.dsns(new)), len(dsns), "a DSN went elsewhere: %r" % new)
        self.assertGreaterEqual(len(dsns), 3, "one DSN per message at least")
        self.assertLessEqual(len(dsns), len(failed), "more DSNs than failed (message, rcpt)")
        named = []
        for r in dsns:
            data = self.sink.read_file(r)
            named += [m.decode() for m in re.findall(rb"(?im)^Final-Recipient:\s*rfc822;\s*(\S+)",
                                                     data)]
        self.assertEqual(sorted(named), sorted(failed),
                         "each failed recipient must be reported exactly once")
        for m, tid in enumerate(tids):
            self.assertEqual([r["rcpt"] for r in self.sink.by_test_id(tid)],
                             ["fine%d@far.example" % m])

    def test_c_failed_dsn_no_loop(self):
        sender = "nouser-back@far.example"  # the sink refuses it too
        before = len(self.sink.records())
        tid = new_test_id("s20-loop")
        res = self.node.send(sender, ["nouser@far.example"],
                             make_message(tid, sender, ["nouser@far.example"]))
        self.assertReply(res, 250, "2.0.0")
        wait_for(lambda: sink_events(self.sink, "reject_rcpt", '"nouser-back@far.example"'), 40,
                 "the DSN to %s to be tried and refused" % sender)
        with self.nothing_extra():
            pass
        self.assertEqual(sink_events(self.sink, "reject_rcpt", '"nouser-back@far.example"'), 1,
                         "the failed DSN was retried or repeated")
        new = [r for r in self.sink.records()[before:] if not (r["test_id"] or "").startswith(
            "barrier")]
        # A double bounce may go to a local postmaster, once; nothing else.
        self.assertEqual([r for r in new if not r["rcpt"].startswith("postmaster@")], [], new)
        self.assertLessEqual(len(new), 1, new)

    def test_d_relay_recipients(self):
        if not self.relay_recipients:
            self.fail("hamrd does not accept [smtpd] relay_recipients (SECURITY.md S20: validate "
                      "recipients at RCPT time with 550 5.1.1); this case needs it")
        tid = new_test_id("s20-rcpt")
        unknown = (550, "550 5.1.1 <unknown@example.com>: Recipient address rejected: "
                        "User unknown")
        with self.nothing_extra(allowed={tid}):
            # An outside client (127.0.0.2 is not in relay_networks) with a forged sender.
            c = self.connect(source="127.0.0.2")
            self.assertEqual(c.cmd("EHLO client.test")[0], 250)
            self.assertReply(c.cmd("MAIL FROM:<forged@victim.example>"), 250)
            self.assertReply(c.cmd("RCPT TO:<known@example.com>"), 250)
            self.assertEqual(c.cmd("RCPT TO:<unknown@example.com>"), unknown)
            self.assertReply(c.cmd("RCPT TO:<anyone@wild.example>"), 250)
            self.assertReply(c.cmd("RCPT TO:<x@victim.example>"), 554, "5.7.1")
            self.assertReply(c.cmd("DATA"), 354)
            c.send(make_message(tid, "forged@victim.example",
                                ["known@example.com", "anyone@wild.example"]) + b".\r\n")
            self.assertReply(c.reply(), 250, "2.0.0")
            self.assertReply(c.cmd("QUIT"), 221)
        self.assertEqual(sorted(r["rcpt"] for r in self.sink.by_test_id(tid)),
                         ["anyone@wild.example", "known@example.com"])
        self.assertEqual([r for r in self.sink.records() if r["rcpt"] in
                          ("forged@victim.example", "unknown@example.com")], [])

    def test_e_relay_recipients_relay_client(self):
        # A client in relay_networks is held to the same list for our relay
        # domains (Postfix smtpd_reject_unlisted_recipient applies to every
        # client): otherwise its mail to unknown users is accepted and bounced.
        if not self.relay_recipients:
            self.fail("hamrd does not accept [smtpd] relay_recipients; this case needs it")
        with self.nothing_extra():
            c = self.connect()
            self.assertEqual(c.cmd("EHLO client.test")[0], 250)
            self.assertReply(c.cmd("MAIL FROM:<inside@example.org>"), 250)
            self.assertReply(c.cmd("RCPT TO:<known@example.com>"), 250)
            self.assertEqual(c.cmd("RCPT TO:<unknown@example.com>"),
                             (550, "550 5.1.1 <unknown@example.com>: Recipient address rejected: "
                                   "User unknown"))
            self.assertReply(c.cmd("RSET"), 250)
            self.assertReply(c.cmd("QUIT"), 221)


# ---------------------------------------------------------------------------
# S21 malicious downstream
# ---------------------------------------------------------------------------

class EvilServer:
    """EvilServer - a scripted next hop on 127.0.0.1; its mode applies to each new connection.

    Modes: good (a well-behaved server that records each message's X-Test-Id),
    huge_reply (1 MB EHLO reply), many_lines (10,000 continuation lines),
    bad_code ("2x9" to MAIL), nul_reply (NUL in the RCPT reply), early_250
    (250 right behind the 354, then 451 to the dot), starttls_inject
    (replies pushed behind its 220 to STARTTLS; over TLS it delays its EHLO
    reply to see whether the client acts on the injected ones, and answers
    the dot with 451). Events are (mode, what) pairs; threads are daemons
    and every socket has a timeout, so nothing here blocks without a bound.
    """

    def __init__(self, cert, key):
        self.lock = threading.Lock()
        self.mode = "good"
        self.events = []
        self.delivered = []  # X-Test-Id of each message accepted in good mode
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, 0))
        self.listener.listen(64)
        self.listener.settimeout(0.5)
        self.port = self.listener.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    def set_mode(self, mode):
        """set_mode - the behaviour of connections accepted from now on."""
        with self.lock:
            self.mode = mode

    def event(self, mode, what):
        """event - record (mode, what)."""
        with self.lock:
            self.events.append((mode, what))

    def count(self, mode, what):
        """count - how often (mode, what) was recorded."""
        with self.lock:
            return sum(1 for e in self.events if e == (mode, what))

    def deliveries(self, tid):
        """deliveries - one entry per message with X-Test-Id tid accepted in good mode."""
        with self.lock:
            return [t for t in self.delivered if t == tid]

    def stop(self):
        """stop - end the accept loop and close the listener."""
        self.running = False
        self.thread.join(5)
        self.listener.close()

    def accept_loop(self):
        """accept_loop - one thread per connection, in the mode current at accept."""
        while self.running:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                mode = self.mode
            threading.Thread(target=self.serve, args=(sock, mode), daemon=True).start()

    def serve(self, sock, mode):
        """serve - one connection; errors (the client hanging up) end it quietly."""
        sock.settimeout(10)
        conn = {"sock": sock, "buf": b""}
        self.event(mode, "connect")
        try:
            self.dialogue(conn, mode)
        except (OSError, ValueError, ssl.SSLError) as e:
            self.event(mode, "error " + type(e).__name__)
        finally:
            try:
                conn["sock"].close()
            except OSError:
                pass

    @staticmethod
    def readline(conn):
        """readline - one line without its line end; None at EOF."""
        while b"\n" not in conn["buf"]:
            chunk = conn["sock"].recv(65536)
            if not chunk:
                return None
            conn["buf"] += chunk
        line, conn["buf"] = conn["buf"].split(b"\n", 1)
        return line.rstrip(b"\r")

    @staticmethod
    def send(conn, data):
        """send - all of data."""
        conn["sock"].sendall(data)

    def more_input_within(self, conn, seconds):
        """more_input_within - did the client send anything before we replied (bounded)?"""
        if conn["buf"]:
            return True
        sock = conn["sock"]
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        sock.settimeout(seconds)
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        finally:
            sock.settimeout(10)
        conn["buf"] += chunk
        return bool(chunk)

    def dialogue(self, conn, mode):
        """dialogue - the server side of SMTP, misbehaving as mode says."""
        tls = False
        done = False  # one transaction per connection
        self.send(conn, b"220 evil.test ESMTP\r\n")
        while True:
            line = self.readline(conn)
            if line is None:
                return
            verb = line[:4].upper()
            if done and verb != b"QUIT":
                self.send(conn, b"421 4.3.0 evil.test one message per connection\r\n")
                return
            if verb in (b"EHLO", b"HELO"):
                if tls and mode == "starttls_inject" and self.more_input_within(conn, 1.0):
                    self.event(mode, "desync")  # acted on an injected reply
                if mode == "huge_reply":
                    self.event(mode, "evil_sent")
                    line_text = b"250-" + b"x" * 65532 + b"\r\n"  # 16 lines of 64 KiB
                    self.send(conn, line_text * 16 + b"250 OK\r\n")
                elif mode == "many_lines":
                    self.event(mode, "evil_sent")
                    self.send(conn, b"250-evil.test\r\n" + b"250-8BITMIME\r\n" * 10000 +
                              b"250 OK\r\n")
                elif mode == "starttls_inject" and not tls:
                    self.send(conn, b"250-evil.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
                else:
                    self.send(conn, b"250-evil.test\r\n250 8BITMIME\r\n")
            elif verb == b"STAR" and mode == "starttls_inject" and not tls:
                self.event(mode, "evil_sent")
                self.send(conn, b"220 2.0.0 Ready to start TLS\r\n"
                                b"250-evil.test\r\n250 8BITMIME\r\n250 2.1.0 Ok\r\n"
                                b"250 2.1.5 Ok\r\n354 go ahead\r\n"
                                b"250 2.0.0 Ok: queued as INJECTED\r\n")
                conn["buf"] = b""
                conn["sock"] = self.ctx.wrap_socket(conn["sock"], server_side=True)
                tls = True
            elif verb == b"MAIL":
                if mode == "bad_code":
                    self.event(mode, "evil_sent")
                    self.send(conn, b"2x9 2.1.0 Ok\r\n")
                else:
                    self.send(conn, b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                if mode == "nul_reply":
                    self.event(mode, "evil_sent")
                    self.send(conn, b"250 2.1.5 O\x00k\r\n")
                else:
                    self.send(conn, b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                if mode == "early_250":
                    self.event(mode, "evil_sent")
                    self.send(conn, b"354 go ahead\r\n250 2.0.0 Ok: queued as EARLY\r\n")
                else:
                    self.send(conn, b"354 End data with <CR><LF>.<CR><LF>\r\n")
                body = []
                while True:
                    bl = self.readline(conn)
                    if bl is None:
                        return
                    if bl == b".":
                        break
                    body.append(bl)
                done = True
                if mode == "good":
                    tid = None
                    for bl in body:
                        if bl.lower().startswith(b"x-test-id:"):
                            tid = bl.split(b":", 1)[1].strip().decode()
                            break
                    with self.lock:
                        self.delivered.append(tid)
                    self.send(conn, b"250 2.0.0 Ok: queued as GOOD\r\n")
                else:
                    self.send(conn, b"451 4.3.0 still misbehaving\r\n")
            elif verb == b"RSET" or verb == b"NOOP":
                self.send(conn, b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                self.send(conn, b"221 2.0.0 Bye\r\n")
                return
            else:
                self.send(conn, b"502 5.5.2 Error: command not recognized\r\n")


class DownstreamTest(AbuseCase):
    barrier_rcpt = "barrier@far.example"

    @classmethod
    def setUpEnv(cls):
        cert, key = make_cert(os.path.join(cls.env.dir, "evil-tls"))
        cls.evil = EvilServer(cert, key)
        cls.sink = cls.env.sink().start()
        cls.node = cls.env.node(
            relayhost_port=cls.sink.port,
            overrides={"transport": {"evil.example": "[%s]:%d" % (HOST, cls.evil.port)},
                       "delivery": {"retry_min": "1s", "retry_max": "2s",
                                    "idle_timeout": "300ms", "connect_timeout": "5s",
                                    "command_timeout": "10s", "data_done_timeout": "10s"}}).start()

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "evil", None):
            cls.evil.stop()
        super().tearDownClass()

    def show(self, qid):
        """show - the QueueEntry of "hamrctl show QID", None once it left the queue."""
        try:
            entries = field(self.node.ctl("show", qid), "entries", []) or []
        except harness.CtlError as e:
            if "no message" in str(e):
                return None
            raise
        return entries[0] if entries else None

    def misbehave(self, mode):
        """misbehave - a message through the next hop in mode: deferred, then delivered once."""
        node, evil = self.node, self.evil
        node.wait_queue_empty()
        evil.set_mode(mode)
        sender, rcpt = "s21@example.org", "victim@evil.example"
        tid = new_test_id("s21-" + mode)
        sent_before = evil.count(mode, "evil_sent")
        with self.nothing_extra(allowed={tid}):
            res = send_message(node.smtp_port, sender, [rcpt], make_message(tid, sender, [rcpt]),
                               timeout=15)
            self.assertReply(res, 250, "2.0.0")
            qid = res.queue_id
            self.assertTrue(qid, res)
            wait_for(lambda: evil.count(mode, "evil_sent") > sent_before, 20,
                     "hamr to meet the %s next hop" % mode)

            def deferred():
                node.check_alive()
                e = self.show(qid)
                rs = field(e, "rcpts", []) if e else []
                return rs and all(field(r, "state") == "deferred" and
                                  int(field(r, "attempts", 0) or 0) >= 1 and
                                  field(r, "last_error", "") for r in rs) and rs

            rcpts = wait_for(deferred, 20, "%s deferred with a diagnostic" % qid)
            diag = field(rcpts[0], "last_error")
            self.assertFalse(diag.startswith("2"), diag)
            self.assertEqual(evil.deliveries(tid), [])
            self.assertEqual(evil.count(mode, "desync"), 0,
                             "hamr acted on replies injected before TLS")
            self.assertEqual(delivery_lines(node, qid, "sent"), 0)
            self.assertEqual(delivery_lines(node, qid, "bounced"), 0)

            evil.set_mode("good")
            node.ctl("flush", qid)
            wait_for(lambda: evil.deliveries(tid), 20, "delivery once the next hop behaves")
            node.wait_queue_empty()
            self.assertEqual(len(evil.deliveries(tid)), 1, "delivered more than once")
            self.assertEqual(delivery_lines(node, qid, "sent"), 1)
        # No DSN: the failures were temporary.
        self.assertEqual([r for r in self.sink.records() if r["rcpt"] == sender], [])
        sys.stderr.write("\n[s21] %s: diagnostic %r\n" % (mode, diag))

    def test_a_huge_reply(self):
        self.misbehave("huge_reply")

    def test_b_many_continuation_lines(self):
        self.misbehave("many_lines")

    def test_c_bad_code(self):
        self.misbehave("bad_code")

    def test_d_nul_in_reply(self):
        self.misbehave("nul_reply")

    def test_e_250_before_dot(self):
        self.misbehave("early_250")

    def test_f_starttls_injection(self):
        self.misbehave("starttls_inject")


if __name__ == "__main__":
    harness.main()
