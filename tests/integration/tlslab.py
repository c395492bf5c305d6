"""tlslab.py - certificates and TLS peers for the outbound TLS-policy tests.

make_ca and make_leaf call the openssl command: a test CA, and leaf
certificates for DNS names signed by it (what hamrd is told to trust with
tls_ca_file or [mta_sts] ca_file). StartTlsSink is a receiving SMTP server
(aiosmtpd) that requires STARTTLS and records each message with the cipher
it came under. PolicyServer is an HTTPS server that hands out MTA-STS
policy files by Host header and counts the requests it answered.
"""

import http.server
import os
import ssl
import subprocess
import threading

import harness

try:
    from aiosmtpd.controller import Controller
except ImportError:
    Controller = None


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=60)


def make_ca(directory, name="hamr test CA"):
    """make_ca - a self-signed CA; returns (cert, key) paths."""
    cert = os.path.join(directory, "ca.pem")
    key = os.path.join(directory, "ca.key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=%s" % name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(cert, 0o644)
    return cert, key


def make_leaf(directory, ca, names, tag):
    """make_leaf - a certificate for the DNS names, signed by ca; returns (cert, key) paths."""
    ca_cert, ca_key = ca
    key = os.path.join(directory, tag + ".key")
    csr = os.path.join(directory, tag + ".csr")
    cert = os.path.join(directory, tag + ".pem")
    ext = os.path.join(directory, tag + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=%s\n" % ",".join("DNS:" + n for n in names))
        f.write("extendedKeyUsage=serverAuth\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", "/CN=%s" % names[0])
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext)
    return cert, key


class _RecordingHandler:
    """_RecordingHandler - aiosmtpd handler: 250 to every DATA, recorded with its cipher."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = []  # (cipher or None, rcpt_tos, data)

    async def handle_DATA(self, server, session, envelope):
        cipher = session.ssl.get("cipher") if session.ssl else None
        with self.lock:
            self.messages.append((cipher, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok"


class StartTlsSink:
    """StartTlsSink - an SMTP server on host:port that requires STARTTLS with cert."""

    def __init__(self, host, port, cert, key):
        if Controller is None:
            raise harness.unittest.SkipTest("python3-aiosmtpd not installed")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.handler = _RecordingHandler()
        self.controller = Controller(self.handler, hostname=host, port=port, tls_context=ctx,
                                     require_starttls=True)
        self.controller.start()

    def with_marker(self, marker):
        """with_marker - the messages whose data holds marker (bytes)."""
        with self.handler.lock:
            return [m for m in self.handler.messages if marker in (m[2] or b"")]

    def stop(self):
        self.controller.stop()


class PolicyServer:
    """PolicyServer - HTTPS on host:port; GET /.well-known/mta-sts.txt answers policies[Host]."""

    def __init__(self, host, port, cert, key, policies):
        self.policies = policies  # {"mta-sts.example.test": "version: STSv1\n..."}
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server name)
                outer.requests += 1
                name = (self.headers.get("Host") or "").split(":")[0].lower()
                text = outer.policies.get(name)
                if self.path != "/.well-known/mta-sts.txt" or text is None:
                    self.send_error(404)
                    return
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """stop - no more answers: the port is closed (connections refused)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
