"""harness.py - real hamrd processes and a recording sink on 127.0.0.1 (or ::1), for integration
tests.

What it does: picks free ports, writes node configs into a temporary
directory, starts, stops and kills hamrd (binary from $HAMRD, default
<repo>/build/hamrd; hamrctl from $HAMRCTL likewise) and the recording sink
(deploy/sink.py, or $HAMR_SINK), sends mail with smtplib or raw sockets,
waits on conditions with a bound, and reads the sink's JSON-lines log.

What it owns: every process it starts (registered, killed at exit even when a
test fails: Env.close, atexit) and one temporary directory per test class
(removed unless HAMR_KEEP_TMP is set). Each process writes stdout and stderr
to a log file under that directory; HamrTestCase prints the logs' tails when
a test fails.

Errors: wait_for raises WaitTimeout with what it waited for and the last
error seen; a process that dies while waited on raises ProcessDied; hamrctl
failures raise CtlError. Nothing here sleeps without a bound.

Run the test scripts with /usr/bin/python3 (Debian's aiosmtpd is needed by
the sink, and swaks by test_relay).
"""

import atexit
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import smtplib
import random
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# Every process any Env started; killed at interpreter exit whatever happened.
_ALL_PROCS = []

# hamrd refuses to run as root without [node] user: as root, the tests give it
# this account (HAMR_TEST_USER, default nobody) and make what it reads its own.
RUN_USER = (os.environ.get("HAMR_TEST_USER") or "nobody") if os.geteuid() == 0 else None


def give_to_run_user(path):
    """give_to_run_user - as root: path becomes RUN_USER's and its temporary parents traversable.

    hamrd opens its certificates, credentials and maps after it has dropped
    to RUN_USER (so that a SIGHUP reload reads them the same way).
    """
    if RUN_USER is None or not os.path.exists(path):
        return
    import pwd
    pw = pwd.getpwnam(RUN_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    tmp = os.path.realpath(tempfile.gettempdir())
    parent = os.path.dirname(os.path.realpath(path))
    while parent.startswith(tmp + os.sep):
        os.chmod(parent, os.stat(parent).st_mode | 0o711)
        parent = os.path.dirname(parent)


MAKE_PKI = os.path.join(REPO, "deploy", "make-pki.sh")
HAMRCTL_TLS_ENV = ("HAMRCTL_CERT", "HAMRCTL_KEY", "HAMRCTL_CA")
_PKI = {"dir": None, "nodes": set()}
# Extra environment of deploy/make-pki.sh, set before the first pki_dir() (e.g. libfaketime
# with FAKETIME="-1d": certificates valid from a day back, for nodes whose clock is behind).
PKI_ENV = {}


def pki_dir():
    """pki_dir - this process's cluster PKI (deploy/make-pki.sh): a CA and operator "tests".

    Made once, in a temporary directory removed at exit; node certificates are
    added by pki_node. Every cluster of the tests shares the CA, as the nodes of
    one real cluster do.
    """
    if _PKI["dir"] is None:
        d = tempfile.mkdtemp(prefix="hamr-pki-")
        os.chmod(d, 0o755)
        for args in (["ca"], ["operator", "tests"]):
            subprocess.run(["bash", MAKE_PKI, d] + args, check=True, stdout=subprocess.DEVNULL,
                           env=dict(os.environ, **PKI_ENV))
        atexit.register(shutil.rmtree, d, True)
        _PKI["dir"] = d
    return _PKI["dir"]


def pki_node(node_id):
    """pki_node - {ca_file, cert_file, key_file} of node node_id in pki_dir (made on first use)."""
    d = pki_dir()
    if node_id not in _PKI["nodes"]:
        if not os.path.exists(os.path.join(d, "node-%d.pem" % node_id)):
            subprocess.run(["bash", MAKE_PKI, d, "node", str(node_id)], check=True,
                           stdout=subprocess.DEVNULL, env=dict(os.environ, **PKI_ENV))
        _PKI["nodes"].add(node_id)
    return {"ca_file": os.path.join(d, "ca.pem"),
            "cert_file": os.path.join(d, "node-%d.pem" % node_id),
            "key_file": os.path.join(d, "node-%d.key" % node_id)}


def ctl_tls_env(env=None):
    """ctl_tls_env - env (default os.environ) with HAMRCTL_CERT/_KEY/_CA of operator "tests".

    What hamrctl needs for a TCP control port of a node with the test PKI.
    """
    d = pki_dir()
    out = dict(os.environ if env is None else env)
    out.update({"HAMRCTL_CERT": os.path.join(d, "operator-tests.pem"),
                "HAMRCTL_KEY": os.path.join(d, "operator-tests.key"),
                "HAMRCTL_CA": os.path.join(d, "ca.pem")})
    return out


def ctl_env_push(cert_base, ca):
    """ctl_env_push - hamrctl in this process presents CERT_BASE.pem/.key and trusts ca.

    For tests with a PKI of their own. Returns what HAMRCTL_* were before, for
    ctl_env_pop.
    """
    saved = {k: os.environ.get(k) for k in HAMRCTL_TLS_ENV}
    os.environ.update({"HAMRCTL_CERT": cert_base + ".pem", "HAMRCTL_KEY": cert_base + ".key",
                       "HAMRCTL_CA": ca})
    return saved


def ctl_env_pop(saved):
    """ctl_env_pop - HAMRCTL_* back to what ctl_env_push found (None: nothing to do)."""
    for k, v in (saved or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def ctl_quiet_env(env):
    """ctl_quiet_env - env for the status polls the harness makes many times a second.

    A hamrctl built with AddressSanitizer checks for leaks at every exit, which
    costs it about three times the CPU of the call itself (measured: 75 ms of
    CPU a call, 26 ms without the check). The polls add up to most of a core
    during a cluster test and slow the nodes under test; every other verb, and
    test_hamrctl's own calls, keep the check.
    """
    env = dict(env)
    asan = env.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "detect_leaks=0"
    return env


def ctl_plain_env(env=None):
    """ctl_plain_env - env (default os.environ) without HAMRCTL_CERT/_KEY/_CA."""
    out = dict(os.environ if env is None else env)
    for k in HAMRCTL_TLS_ENV:
        out.pop(k, None)
    return out


class WaitTimeout(AssertionError):
    """WaitTimeout - a bounded wait ran out (an AssertionError, so it reads as a failure)."""


class ProcessDied(AssertionError):
    """ProcessDied - a process the test depends on has exited."""


class CtlError(Exception):
    """CtlError - hamrctl failed (exit status, unreachable node, bad JSON)."""


def harness_binary(env_name, default_name):
    """harness_binary - path of a built binary: $ENV_NAME, else build/NAME, else build*/NAME."""
    path = os.environ.get(env_name)
    if path:
        return path
    default = os.path.join(REPO, "build", default_name)
    if os.path.exists(default):
        return default
    found = sorted(
        (os.path.join(REPO, d, default_name) for d in os.listdir(REPO) if d.startswith("build")),
        key=lambda p: os.path.getmtime(p) if os.path.exists(p) else 0,
        reverse=True,
    )
    return found[0] if found and os.path.exists(found[0]) else default


def hamrd_path():
    return harness_binary("HAMRD", "hamrd")


def hamrctl_path():
    return harness_binary("HAMRCTL", "hamrctl")


def sink_path():
    return os.environ.get("HAMR_SINK") or os.path.join(REPO, "deploy", "sink.py")


_ports_handed_out = set()


def _ephemeral_low():
    """_ephemeral_low - the first port the kernel hands to outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def is_ipv6(host):
    """is_ipv6 - is host an IPv6 literal ("::1")?"""
    return ":" in host


def hostport(host, port):
    """hostport - "HOST:PORT", with an IPv6 literal bracketed ("[::1]:PORT"), as hamr and
    hamrctl write addresses."""
    return "[%s]:%d" % (host, port) if is_ipv6(host) else "%s:%d" % (host, port)


def ipv6_loopback():
    """ipv6_loopback - can a socket be bound on ::1?"""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def make_ip_cert(directory, prefix="sink"):
    """make_ip_cert - a self-signed certificate for IP 127.0.0.1 (openssl req): (cert, key) paths.

    For an SMTP server in the test process (aiosmtpd) that hamrd talks STARTTLS to.
    """
    cert = os.path.join(directory, "%s-cert.pem" % prefix)
    key = os.path.join(directory, "%s-key.pem" % prefix)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    os.chmod(cert, 0o644)
    return cert, key


def free_port(host="127.0.0.1"):
    """free_port - a TCP port on host (127.0.0.1, or ::1) that was free a moment ago.

    Ports come from below the kernel's ephemeral range, so that the outgoing
    connections of the nodes started so far (raft, peer, delivery) cannot be
    holding one, and never the same port twice in one test process. A port
    from bind(0) would be in that range and could be taken by the time the
    node that was given it binds it.
    """
    high = min(_ephemeral_low(), 32768)
    low = max(1024, high - 12000)
    for _ in range(500):
        port = random.randrange(low, high)
        if port in _ports_handed_out:
            continue
        family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _ports_handed_out.add(port)
        return port
    raise RuntimeError("no free port below %d" % high)


def file_text(path):
    """file_text - a log file's text (invalid UTF-8 replaced), "" if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def text_tail(text, n):
    """text_tail - the last n lines of text."""
    return "\n".join(text.splitlines()[-n:])


def wait_for(pred, timeout, what, interval=0.05):
    """wait_for - poll pred every interval seconds until it returns a true value; return it.

    Raises WaitTimeout naming `what` (and the last exception pred raised)
    after timeout seconds. ProcessDied from pred is passed through at once.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except ProcessDied:
            raise
        except Exception as e:  # the condition is simply not true yet
            last_exc = e
        if time.monotonic() >= deadline:
            detail = " (last error: %r)" % (last_exc,) if last_exc else ""
            raise WaitTimeout("timed out after %.1fs waiting for %s%s" % (timeout, what, detail))
        time.sleep(interval)


def new_test_id(prefix):
    """new_test_id - a unique X-Test-Id value."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def wire_body(data):
    """wire_body - what the DATA phase carries for data, un-stuffed: CRLF line ends, final CRLF.

    This is smtplib's normalisation for str messages; send_message applies
    it to bytes as well, so what is hashed here is exactly what was sent.
    """
    data = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def make_message(test_id, sender, rcpts, subject="hamr test", body=None, extra_headers=()):
    """make_message - an RFC 5322 message (bytes, CRLF) carrying X-Test-Id."""
    headers = [
        "From: <%s>" % sender if sender else "From: <>",
        "To: %s" % ", ".join("<%s>" % r for r in rcpts),
        "Subject: %s" % subject,
        "Message-ID: <%s@client.test>" % test_id,
        "X-Test-Id: %s" % test_id,
    ]
    headers.extend(extra_headers)
    if body is None:
        body = "This is test message %s.\r\n" % test_id
    if isinstance(body, str):
        body = body.encode("utf-8")
    return wire_body(("\r\n".join(headers) + "\r\n\r\n").encode("utf-8") + body)


class SendResult:
    """SendResult - the outcome of one SMTP transaction.

    stage: where it ended ("connect", "mail", "rcpt", "data", "done");
    code/text: the last reply (code None when the connection failed);
    rcpt_replies: (code, text) per recipient; queue_id: from "queued as";
    body: the un-stuffed bytes the DATA phase carried.
    """

    def __init__(self):
        self.stage = "connect"
        self.code = None
        self.text = ""
        self.mail_reply = None
        self.rcpt_replies = []
        self.queue_id = None
        self.body = b""

    def __repr__(self):
        return "SendResult(stage=%s code=%s text=%r rcpts=%r)" % (
            self.stage, self.code, self.text, self.rcpt_replies)


class _ProxySMTP(smtplib.SMTP):
    """_ProxySMTP - smtplib.SMTP that writes a PROXY protocol header before the greeting."""

    def __init__(self, proxy_header, *args, **kw):
        self._proxy_header = proxy_header
        super().__init__(*args, **kw)

    def _get_socket(self, host, port, timeout):
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self._proxy_header)
        return sock


def proxy_v1_header(client, server="127.0.0.1", client_port=40000, server_port=25):
    """proxy_v1_header - "PROXY TCP4 CLIENT SERVER CPORT SPORT\r\n" as bytes."""
    return ("PROXY TCP4 %s %s %d %d\r\n" % (client, server, client_port, server_port)).encode()


def send_message(port, sender, rcpts, data, host="127.0.0.1", helo="client.test",
                 mail_options=(), timeout=30, source=None, proxy_header=None):
    """send_message - one transaction with smtplib; never raises for SMTP-level failures.

    source: the local address to connect from (any 127.x.y.z works on Linux);
    proxy_header: bytes sent right after connecting, before the greeting is
    read (a PROXY protocol header, as a load balancer would send).
    """
    res = SendResult()
    res.body = wire_body(data)
    conn = None
    kw = {"local_hostname": helo, "timeout": timeout}
    if source:
        kw["source_address"] = (source, 0)
    try:
        if proxy_header:
            conn = _ProxySMTP(proxy_header, host, port, **kw)
        else:
            conn = smtplib.SMTP(host, port, **kw)
        conn.ehlo()
        res.stage = "mail"
        code, text = conn.mail(sender, list(mail_options))
        res.mail_reply = (code, text.decode("utf-8", "replace"))
        res.code, res.text = res.mail_reply
        if code != 250:
            return res
        res.stage = "rcpt"
        for r in rcpts:
            code, text = conn.rcpt(r)
            res.rcpt_replies.append((code, text.decode("utf-8", "replace")))
            res.code, res.text = res.rcpt_replies[-1]
        if not any(c == 250 or c == 251 for c, _ in res.rcpt_replies):
            return res
        res.stage = "data"
        try:
            code, text = conn.data(res.body)
        except smtplib.SMTPDataError as e:
            res.code, res.text = e.smtp_code, e.smtp_error.decode("utf-8", "replace")
            return res
        res.code, res.text = code, text.decode("utf-8", "replace")
        if code == 250:
            res.stage = "done"
            m = re.search(r"queued as (\S+)", res.text)
            res.queue_id = m.group(1) if m else None
    except smtplib.SMTPResponseException as e:
        res.code, res.text = e.smtp_code, str(e.smtp_error)
    except (smtplib.SMTPException, OSError) as e:
        res.code, res.text = None, "%s: %s" % (type(e).__name__, e)
    finally:
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()
    return res


class RawSMTP:
    """RawSMTP - a raw socket SMTP dialogue for hostile input; every read is bounded."""

    def __init__(self, port, host="127.0.0.1", timeout=10, read_greeting=True):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.greeting = self.reply() if read_greeting else None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def reply(self):
        """reply - one (possibly multi-line) reply as (code, text); (None, "") on EOF."""
        lines = []
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\r\n" not in self.buf:
                if time.monotonic() > deadline:
                    raise WaitTimeout("no complete SMTP reply within %ss (have %r)"
                                      % (self.timeout, self.buf[:200]))
                chunk = self.sock.recv(65536)
                if not chunk:
                    if lines or self.buf:
                        raise AssertionError("connection closed inside a reply: %r" % self.buf)
                    return None, ""
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                break
        code = int(lines[-1][:3]) if lines[-1][:3].isdigit() else -1
        return code, "\n".join(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def replies_until_close(self, limit=50):
        """replies_until_close - every reply until the server closes (at most limit)."""
        out = []
        for _ in range(limit):
            try:
                code, text = self.reply()
            except (ConnectionResetError, BrokenPipeError):
                return out  # closed with unread input: the kernel sends RST
            if code is None:
                return out
            out.append((code, text))
        raise AssertionError("server did not close after %d replies: %r" % (limit, out))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def mail_reply(port, host="127.0.0.1", sender="probe@example.org", timeout=10):
    """mail_reply - (code, text) of MAIL FROM:<sender> on a connection of its own, after a 220
    greeting and a 250 to EHLO (asserted); then QUIT."""
    conn = RawSMTP(port, host=host, timeout=timeout)
    try:
        if conn.greeting[0] != 220:
            raise AssertionError("greeting: %r" % (conn.greeting,))
        ehlo = conn.cmd("EHLO client.test")
        if ehlo[0] != 250:
            raise AssertionError("EHLO: %r" % (ehlo,))
        reply = conn.cmd("MAIL FROM:<%s>" % sender)
        conn.cmd("QUIT")
        return reply
    finally:
        conn.close()


class Proc:
    """Proc - one child process with its output in a log file."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.logf = open(log_path, "ab")
        self.logf.write(("=== start %s: %s\n" % (time.strftime("%H:%M:%S"), " ".join(argv))).encode())
        self.logf.flush()
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                      stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        self.term_sent = False
        _ALL_PROCS.append(self)

    def alive(self):
        return self.popen.poll() is None

    def check_alive(self):
        """check_alive - raise ProcessDied if the process has exited."""
        rc = self.popen.poll()
        if rc is not None:
            raise ProcessDied("%s exited with status %s; log %s:\n%s"
                              % (self.name, rc, self.log_path, self.log_tail(40)))

    def terminate(self):
        """terminate - send SIGTERM once, without waiting (stop waits for the exit)."""
        if not self.term_sent and self.alive():
            self.term_sent = True
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout=30):
        """stop - SIGTERM (unless terminate sent it already), wait up to timeout, then
        SIGKILL. Returns the exit status.

        Never a second SIGTERM: hamrd closes its signal watchers at the end of
        its shutdown, and a second one arriving then kills it (exit status -15).
        """
        if self.alive():
            self.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
                self._closed()
                raise AssertionError("%s did not exit within %ss of SIGTERM" % (self.name, timeout))
        self._closed()
        return self.popen.returncode

    def kill9(self):
        """kill9 - SIGKILL and reap."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)
        self._closed()
        return self.popen.returncode

    def _closed(self):
        if not self.logf.closed:
            self.logf.close()
        if self in _ALL_PROCS:
            _ALL_PROCS.remove(self)

    def log_text(self):
        return file_text(self.log_path)

    def log_tail(self, n=150):
        return text_tail(self.log_text(), n)


@atexit.register
def _kill_everything():
    for p in list(_ALL_PROCS):
        try:
            p.kill9()
        except Exception:
            pass


class Sink:
    """Sink - deploy/sink.py on 127.0.0.1 (or host, e.g. ::1); port 0 lets the OS choose.

    data_start_delay, data_delay: a slow next hop (seconds before 354, before the reply to
    the final dot; sink.py --data-start-delay, --data-delay).
    """

    def __init__(self, env, name="sink", port=0, tempfail_first=0, reject_rcpt=None,
                 tempfail_rcpt=None, host="127.0.0.1", smtputf8=False, data_start_delay=0,
                 data_delay=0):
        self.env = env
        self.name = name
        self.port = port
        self.host = host
        self.dir = os.path.join(env.dir, name)
        self.log_path = os.path.join(env.dir, name + ".jsonl")
        self.options = []
        if tempfail_first:
            self.options += ["--tempfail-first", str(tempfail_first)]
        if reject_rcpt:
            self.options += ["--reject-rcpt", reject_rcpt]
        if tempfail_rcpt:
            self.options += ["--tempfail-rcpt", tempfail_rcpt]
        if smtputf8:
            self.options += ["--smtputf8"]
        if data_start_delay:
            self.options += ["--data-start-delay", str(data_start_delay)]
        if data_delay:
            self.options += ["--data-delay", str(data_delay)]
        self.proc = None

    def start(self, timeout=15):
        argv = [PYTHON, sink_path(), "--listen", hostport(self.host, self.port),
                "--dir", self.dir, "--log", self.log_path] + self.options
        log_path = os.path.join(self.env.dir, self.name + ".log")
        skip = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        self.proc = self.env.spawn(self.name, argv)

        def listening():
            self.proc.check_alive()
            with open(log_path, "rb") as f:
                f.seek(skip)
                text = f.read().decode("utf-8", "replace")
            m = re.search(r"sink listening on \S+:(\d+)", text)
            return m and int(m.group(1))

        self.port = wait_for(listening, timeout, "%s to listen" % self.name)
        return self

    def stop(self):
        return self.proc.stop() if self.proc else None

    def records(self):
        """records - every JSON line logged so far (one per message and recipient)."""
        try:
            with open(self.log_path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def by_test_id(self, test_id):
        return [r for r in self.records() if r.get("test_id") == test_id]

    def wait_test_id(self, test_id, count=1, timeout=30):
        """wait_test_id - wait until count records carry test_id; return them."""
        return wait_for(lambda: self._n_records(test_id, count), timeout,
                        "%d sink record(s) with X-Test-Id %s" % (count, test_id), interval=0.1)

    def _n_records(self, test_id, count):
        self.env.check_nodes_alive()
        recs = self.by_test_id(test_id)
        return recs if len(recs) >= count else None

    def events(self, kind):
        """events - how many "sink: KIND" lines the sink printed (refusals, deliveries)."""
        if not self.proc:
            return 0
        return len(re.findall(r"^sink: %s " % re.escape(kind), self.proc.log_text(), re.M))

    @staticmethod
    def read_file(record):
        with open(record["file"], "rb") as f:
            return f.read()


class Node:
    """Node - one hamrd: its config, data directory, ports and process.

    By default every listener is on a free port of 127.0.0.1. A cluster node
    may instead give host (the IPv4 or IPv6 literal of all its listeners,
    e.g. "::1": written bracketed where hamr wants an address), ports
    ({"smtp", "raft", "control", "peer"}: fixed ports), peer=True (a [listen]
    peer on a free port), relayhost_host, and argv_prefix (run hamrd through
    e.g. "ip netns exec NS", which execs in place, so signals reach hamrd).
    proc_env: variables added to hamrd's environment at its next start (e.g.
    LD_PRELOAD of libfaketime); empty by default.
    """

    def __init__(self, env, node_id=1, name=None, relayhost_port=None, voters=None,
                 overrides=None, host="127.0.0.1", ports=None, peer=False, argv_prefix=None,
                 relayhost_host="127.0.0.1"):
        self.env = env
        self.id = node_id
        self.name = name or "node%d" % node_id
        self.home = os.path.join(env.dir, self.name)
        os.makedirs(self.home, exist_ok=True)
        self.data_dir = os.path.join(self.home, "data")
        self.conf_path = os.path.join(self.home, "hamr.conf")
        self.host = host
        ports = ports or {}
        self.smtp_port = ports.get("smtp") or free_port(host)
        self.raft_port = ports.get("raft") or free_port(host)
        self.control_port = ports.get("control") or free_port(host)
        self.control_addr = None  # what ctl gives hamrctl -s; None: HOST:control_port
        self.peer_port = ports.get("peer") or (free_port(host) if peer else None)
        self.argv_prefix = list(argv_prefix or [])
        # the hamrd this node runs (None: hamrd_path()); a rolling upgrade sets it
        # between a stop and the next start
        self.binary = None
        self.relayhost_host = relayhost_host
        self.voters = voters
        self.relayhost_port = relayhost_port
        self.overrides = overrides or {}
        self.proc_env = {}
        self.proc = None
        self.write_config()

    def config_sections(self):
        """config_sections - the config as {section: {key: value}}, overrides applied."""
        sections = {
            "node": {"id": str(self.id), "data_dir": self.data_dir,
                     "hostname": "%s.relay.test" % self.name, "log_level": "debug"},
            "listen": {"smtp": hostport(self.host, self.smtp_port),
                       "raft": hostport(self.host, self.raft_port),
                       "control": hostport(self.host, self.control_port)},
            "cluster": {"voters": self.voters or "%d@%s" % (self.id,
                                                            hostport(self.host, self.raft_port)),
                        "election_timeout": "1s", "heartbeat": "100ms",
                        # Small log segments: many nodes share the test machine's disk.
                        "snapshot_bytes": "16M"},
            "smtpd": {"relay_networks": "127.0.0.0/8", "relay_domains": "example.com",
                      "message_size_limit": "10M"},
            "delivery": {"retry_min": "1s", "retry_max": "4s", "queue_lifetime": "5d",
                         "lease_time": "30s", "scan_interval": "200ms"},
            "storage": {"min_free": "16M"},
        }
        if is_ipv6(self.host):
            sections["smtpd"]["relay_networks"] = "127.0.0.0/8, ::1/128"
        if RUN_USER:
            sections["node"]["user"] = RUN_USER
        # Between nodes TLS is the default; plaintext = yes in overrides turns it off.
        tls_over = self.overrides.get("cluster_tls", {})
        if str(tls_over.get("plaintext", "no")).lower() not in ("yes", "true", "on", "1"):
            sections["cluster_tls"] = pki_node(self.id)
        if self.peer_port:
            sections["listen"]["peer"] = hostport(self.host, self.peer_port)
        if self.relayhost_port:
            sections["delivery"]["relayhost"] = "[%s]:%d" % (self.relayhost_host,
                                                             self.relayhost_port)
        for section, keys in self.overrides.items():
            sections.setdefault(section, {})
            for key, value in keys.items():
                if value is None:
                    sections[section].pop(key, None)
                else:
                    sections[section][key] = value
        return sections

    def write_config(self):
        lines = ["# written by tests/integration/harness.py"]
        for section, keys in self.config_sections().items():
            lines.append("[%s]" % section)
            lines.extend("%s = %s" % kv for kv in keys.items())
            lines.append("")
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines))

    def start(self, wait=True, timeout=45):
        """start - run hamrd -c CONF; with wait, return once it is leader and greets."""
        for keys in self.config_sections().values():
            for key, value in keys.items():
                if key.endswith("_file") or key == "relay_recipients":
                    give_to_run_user(value)
        env = dict(os.environ, **self.proc_env) if self.proc_env else None
        self.proc = self.env.spawn(self.name,
                                   self.argv_prefix + [self.binary or hamrd_path(), "-c",
                                                       self.conf_path],
                                   env=env)
        if wait:
            self.wait_ready(timeout)
        return self

    def stop(self, timeout=30):
        """stop - SIGTERM; returns the exit status (0 is a clean stop)."""
        return self.proc.stop(timeout) if self.proc else None

    def kill9(self):
        return self.proc.kill9() if self.proc else None

    def check_alive(self):
        if self.proc:
            self.proc.check_alive()

    def tls(self):
        """tls - the node's [cluster_tls] files ({} in plaintext mode)."""
        return {k: v for k, v in self.config_sections().get("cluster_tls", {}).items()
                if k.endswith("_file")}

    def ctl_env(self):
        """ctl_env - the environment hamrctl needs for this node's TCP control port.

        The test PKI's operator certificate when the node uses the test PKI; none
        in plaintext mode; the caller's own HAMRCTL_* for a PKI of its own.
        """
        tls = self.tls()
        if not tls:
            return ctl_plain_env()
        if tls.get("ca_file") == pki_node(self.id)["ca_file"]:
            return ctl_tls_env()
        return dict(os.environ)

    def ctl(self, verb, *args, timeout=15):
        """ctl - hamrctl --json VERB ARGS against this node; the parsed JSON response."""
        addr = self.control_addr or hostport(self.host, self.control_port)
        argv = [hamrctl_path(), "-s", addr, "--json", verb] + list(args)
        env = self.ctl_env()
        if verb == "status":
            env = ctl_quiet_env(env)
        try:
            out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                 timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise CtlError("%s timed out" % " ".join(argv))
        if out.returncode != 0:
            raise CtlError("%s: exit %d: %s%s" % (" ".join(argv), out.returncode,
                                                  out.stderr.decode(errors="replace"),
                                                  out.stdout.decode(errors="replace")))
        try:
            return json.loads(out.stdout)
        except ValueError as e:
            raise CtlError("%s: not JSON (%s): %r" % (" ".join(argv), e, out.stdout[:500]))

    def metrics(self):
        """metrics - the text of the node's /metrics (its [listen] http, node.http_port)."""
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def counters(self, name, label="event"):
        """counters - {label value: count} of the labelled counter name on /metrics."""
        return {m.group(1): int(float(m.group(2))) for m in re.finditer(
            r'(?m)^%s\{%s="(\w+)"\} (\S+)$' % (name, label), self.metrics())}

    def status(self):
        """status - the NodeStatus object of "hamrctl status"."""
        resp = self.ctl("status")
        return field(resp, "status", resp)

    def state(self):
        return field(self.status(), "state", "")

    def queue(self):
        """queue - the QueueEntry list of "hamrctl queue" (empty list when absent)."""
        return field(self.ctl("queue"), "entries", []) or []

    def queue_messages(self):
        return int(field(self.status(), "queue_messages", 0) or 0)

    def wait_ready(self, timeout=45):
        """wait_ready - until hamrctl says leader, SMTP greets with 220 and MAIL gets 250.

        The MAIL probe (then RSET, QUIT) queues nothing; it shows that the node
        takes mail, not only that it is leader.
        """
        def ready():
            self.check_alive()
            if self.state() != "leader":
                return False
            conn = RawSMTP(self.smtp_port, host=self.host, timeout=5)
            try:
                if conn.greeting[0] != 220 or conn.cmd("EHLO probe.test")[0] != 250:
                    return False
                ok = conn.cmd("MAIL FROM:<probe@example.org>")[0] == 250
                conn.cmd("RSET")
                conn.cmd("QUIT")
                return ok
            finally:
                conn.close()

        wait_for(ready, timeout, "%s to become leader and greet" % self.name, interval=0.1)

    def wait_queue_empty(self, timeout=30):
        """wait_queue_empty - until "hamrctl queue" lists nothing."""
        def empty():
            self.check_alive()
            return self.queue() == []

        wait_for(empty, timeout, "%s queue to be empty" % self.name, interval=0.1)

    def send(self, sender, rcpts, data, retries_4xx=20, **kw):
        """send - send_message, retrying 4xx and connection failures a bounded number of times."""
        res = None
        for _ in range(retries_4xx + 1):
            self.check_alive()
            kw.setdefault("host", self.host)
            res = send_message(self.smtp_port, sender, rcpts, data, **kw)
            if res.code is not None and not 400 <= res.code < 500:
                return res
            time.sleep(0.2)
        return res


@contextlib.contextmanager
def nothing_extra(test, node, sink, allowed=(), rcpt="barrier@example.com", **send_kw):
    """nothing_extra - after the block, only a barrier message and allowed test ids were delivered.

    Waits for node's queue to be empty, runs the block, then sends a barrier
    message (send_kw go to node.send) and waits until the sink has it and the
    queue is empty again: anything the block had queued has been delivered by
    then, so the sink's new records may hold only the barrier and allowed ids,
    and never a message from a "smuggled" sender. The node must be alive.
    """
    node.wait_queue_empty()
    before = len(sink.records())
    yield
    node.check_alive()
    tid = new_test_id("barrier")
    res = node.send("barrier@example.org", [rcpt],
                    make_message(tid, "barrier@example.org", [rcpt]), **send_kw)
    test.assertReply(res, 250, "2.0.0")
    sink.wait_test_id(tid)
    node.wait_queue_empty()
    new = sink.records()[before:]
    extra = [r for r in new if r["test_id"] != tid and r["test_id"] not in allowed]
    test.assertEqual(extra, [], "the sink got messages it should not have")
    test.assertEqual([r for r in new if "smuggled" in r["mail_from"]], [],
                     "a smuggled message was delivered")


def config_key_supported(section, key, value):
    """config_key_supported - does "hamrd --check-config" accept [section] key = value?

    For optional settings that a test uses when the node offers them.
    """
    with tempfile.TemporaryDirectory(prefix="hamr-check-") as d:
        path = os.path.join(d, "probe.conf")
        with open(path, "w") as f:
            f.write("[node]\nid = 1\ndata_dir = %s\n[listen]\nraft = 127.0.0.1:%d\n"
                    "[%s]\n%s = %s\n" % (os.path.join(d, "data"), free_port(), section, key,
                                         value))
            if section != "cluster_tls":  # a probe of one key, not of the cluster PKI
                f.write("[cluster_tls]\nplaintext = yes\n")
        out = subprocess.run([hamrd_path(), "--check-config", "-c", path], capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=30)
        return out.returncode == 0


def field(obj, name, default=None):
    """field - obj[name] in snake_case or its camelCase spelling (JSON of protobuf)."""
    if not isinstance(obj, dict):
        return default
    if name in obj:
        return obj[name]
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    return obj.get(camel, default)


class Env:
    """Env - a temporary directory and the processes of one test class."""

    def __init__(self, name):
        self.dir = tempfile.mkdtemp(prefix="hamr-%s-" % name)
        os.chmod(self.dir, 0o755)  # hamrd runs as RUN_USER
        self.procs = []
        self.nodes = []
        self.sinks = []

    def spawn(self, name, argv, env=None):
        """spawn - start argv logging to NAME.log; env: its environment (None: ours)."""
        proc = Proc(name, argv, os.path.join(self.dir, name + ".log"), env=env)
        self.procs.append(proc)
        return proc

    def sink(self, **kw):
        s = Sink(self, **kw)
        self.sinks.append(s)
        return s

    def node(self, **kw):
        n = Node(self, **kw)
        self.nodes.append(n)
        return n

    def check_nodes_alive(self):
        for n in self.nodes:
            if n.proc is not None and n.proc in _ALL_PROCS:
                n.check_alive()

    def dump_logs(self, stream=sys.stderr, lines=150):
        """dump_logs - print the tail of every log of this env."""
        seen = set()
        for p in self.procs:
            if p.log_path in seen:
                continue
            seen.add(p.log_path)
            stream.write("\n----- %s (%s), last %d lines -----\n%s\n"
                         % (p.name, p.log_path, lines, p.log_tail(lines)))
        for s in self.sinks:
            stream.write("\n----- %s records -----\n" % s.name)
            for r in s.records()[-30:]:
                stream.write(json.dumps(r) + "\n")
        stream.flush()

    def sanitizer_reports(self):
        """sanitizer_reports - ASan/UBSan findings in any hamrd log."""
        found = []
        for p in self.procs:
            text = p.log_text()
            for pat in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if pat in text:
                    found.append("%s: %s" % (p.log_path, pat))
        return sorted(set(found))

    def close(self):
        """close - SIGTERM every node (each must exit 0), stop sinks, kill leftovers.

        The nodes get SIGTERM together and are then waited for one by one (each
        within Proc.stop's bound): stopped one after another, the last one of a
        cluster, alone without a quorum, takes about 1.5 s longer to exit, which
        every cluster test paid at its end. Returns a list of problems (non-zero
        exits, sanitizer reports).
        """
        problems = []
        running = [n for n in self.nodes if n.proc is not None and n.proc.alive()]
        for n in running:
            n.proc.terminate()
        for n in running:
            try:
                rc = n.stop()
            except AssertionError as e:
                problems.append(str(e))
                continue
            if rc != 0:
                problems.append("%s exited with status %s on SIGTERM" % (n.name, rc))
        for s in self.sinks:
            if s.proc is not None and s.proc.alive():
                s.stop()
        for p in self.procs:
            if p.alive():
                p.kill9()
        problems.extend(self.sanitizer_reports())
        return problems

    def remove(self):
        if not os.environ.get("HAMR_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)


class HamrTestCase(unittest.TestCase):
    """HamrTestCase - one Env per class; logs printed on failure; everything stopped after.

    Subclasses implement setUpEnv(cls) (classmethod) to start their sink and nodes.
    """

    env = None

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(hamrd_path()):
            raise unittest.SkipTest("hamrd not built (%s)" % hamrd_path())
        cls.env = Env(cls.__name__)
        try:
            cls.setUpEnv()
        except BaseException:
            cls.env.dump_logs()
            cls.env.close()
            cls.env.remove()
            raise

    @classmethod
    def setUpEnv(cls):
        pass

    def _has_failed(self):
        """_has_failed - did this test (or one of its subtests) fail or error so far?"""
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return False
        for test, _ in list(result.failures) + list(result.errors):
            if test is self or getattr(test, "test_case", None) is self:
                return True
        return False

    def tearDown(self):
        if self._has_failed():
            type(self).keep_dir = True
            sys.stderr.write("\n===== logs for failed %s (dir %s) =====\n" % (self.id(), self.env.dir))
            self.env.dump_logs()

    @classmethod
    def tearDownClass(cls):
        if cls.env is None:
            return
        problems = cls.env.close()
        if problems:
            cls.env.dump_logs()
        if problems or getattr(cls, "keep_dir", False):
            sys.stderr.write("kept %s for inspection\n" % cls.env.dir)
        else:
            cls.env.remove()
        if problems:
            raise AssertionError("after the tests: " + "; ".join(problems))

    def assertReply(self, res, code, enhanced=None, msg=None):
        """assertReply - res (SendResult or (code, text)) has this code and enhanced code."""
        got_code, got_text = (res.code, res.text) if isinstance(res, SendResult) else res
        self.assertEqual(got_code, code, msg or "reply was %r" % (res,))
        if enhanced:
            self.assertIn(enhanced, got_text, msg or "reply was %r" % (res,))


def main():
    """main - unittest.main with verbose output and a non-zero exit on failure."""
    unittest.main(verbosity=2)
