#!/usr/bin/python3
"""test_cluster_rotate.py - the cluster PKI rotated under load with SIGHUP, no restart.

Three voters whose [cluster_tls] files are copies in ENV/live of a PKI this
test makes with deploy/make-pki.sh (node certificates for NODE_DAYS days);
hamrctl uses an operator's certificate of it (HAMRCTL_* in the environment,
as test_control.py does). A load (cluster.LoadGen) goes through every node
the whole time. A file is rotated as an operator would: the new one is
written beside it, given to the account hamrd runs as, and renamed over the
configured path (os.replace), then hamrd gets SIGHUP.

  a  every node in turn gets a new key and certificate (ROT_DAYS days): its
     log says "cluster TLS reloaded: node:ID, certificate expires in N days, ..." with the new validity, and
     new TLS connections to its control, raft and peer ports present the new
     certificate. Then a leadership transfer to a node that has not led
     (so the others hold no peer connection to it and must open new ones,
     logged "peer hello") and a message through each follower, forwarded.
     No attempt of the load that overlaps the rotation gets a 4xx, a 5xx or
     a connection error, no leader is elected and no peer connection is
     lost in it (open connections go on); no 5xx at all; the oracle finds
     nothing lost.
  b  one follower's certificate is rotated to a truncated file (with its new
     key): the reload fails, logged, and the node keeps its old certificate
     (new connections get it), takes mail and becomes leader when asked; the
     complete file and SIGHUP again bring the new one. No error reply during
     the rotation, nothing lost.
  c  CA rotation: ca_file holds the old and a new CA on every node; then
     every node gets a certificate of the new CA (the operator too); then
     ca_file holds the new CA alone. After that a certificate of the old CA
     is refused, so the transfer and the forwarded messages that follow
     prove that the connections opened since use the new certificates both
     ways. No error reply during the rotation, nothing lost.

Security: replies are untrusted text, only compared.
"""

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from cluster import Cluster, ClusterTestCase, cluster_log  # noqa: E402
from harness import make_message, new_test_id, send_message, sha256_hex, wait_for  # noqa: E402

MAKE_PKI = os.path.join(harness.REPO, "deploy", "make-pki.sh")
NODE_DAYS = 100  # the certificates the nodes start with
ROT_DAYS = 400  # test a's new certificates
FIX_DAYS = 500  # test b's
CA1_DAYS = 5000  # test c's new CA (the first one has make-pki.sh's 3650)
CA1_NODE_DAYS = 600  # and the node certificates it signs
# "cluster TLS reloaded: node:2, certificate expires in 400 days, CA in 3649 days (...)";
# "(renew soon)" after the days under 30, "expired" once past.
RELOADED = re.compile(r"cluster TLS reloaded: node:\d+, certificate expires in (-?\d+) days"
                      r"(?: \(renew soon\))?, CA in (-?\d+) days")
RELOAD_FAILED = re.compile(r"reload of the cluster certificate failed: (.*) "
                           r"\(the old one stays in use\)")
PEER_HELLO = re.compile(r"peer hello peer=(\S+) node=(\d+)")
PEER_GONE = re.compile(r"peer connection (?:ended|closed) peer=(\S+)")
RELOAD_BOUND = 15.0  # seconds from SIGHUP to the log line
ROTATION_PAUSE = 2.0  # seconds of load at least after each step of a rotation


def pki(d, *args, days=None, ca_days=None):
    """pki - deploy/make-pki.sh D ARGS, with HAMR_PKI_DAYS / HAMR_PKI_CA_DAYS when given."""
    env = dict(os.environ)
    if days is not None:
        env["HAMR_PKI_DAYS"] = str(days)
    if ca_days is not None:
        env["HAMR_PKI_CA_DAYS"] = str(ca_days)
    subprocess.run(["bash", MAKE_PKI, d] + list(args), check=True, stdout=subprocess.DEVNULL,
                   env=env)


def der_of(pem_path):
    """der_of - the first certificate of a PEM file, DER."""
    with open(pem_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def fingerprint(der):
    """fingerprint - a certificate's SHA-256 (hex, shortened), for messages."""
    return hashlib.sha256(der).hexdigest()[:16]


def install(src, dst, data=None):
    """install - src's bytes (or data) at dst the way an operator rotates a file.

    Written beside dst with dst's mode, given to the account hamrd runs as,
    then renamed over dst: hamrd never reads a half-written file of ours
    (test b writes a truncated one on purpose, through data).
    """
    if data is None:
        with open(src, "rb") as f:
            data = f.read()
    tmp = dst + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, os.stat(dst).st_mode & 0o7777 if os.path.exists(dst) else 0o600)
    harness.give_to_run_user(tmp)
    os.replace(tmp, dst)


def served_cert(host, port, ca, cert, key, control=False):
    """served_cert - (DER of the certificate a new TLS connection to host:port is shown,
    the answer to "status" when control, else b"").

    Presents cert/key, trusts ca. On a control port (control true) it asks
    "status" (the request frame of test_control.py) and reads the answer
    frame (4 bytes of length, then the message): a refused client
    certificate shows there, as an ssl.SSLError or an answer cut short
    (TLS 1.3 ends the client's handshake before the server has checked its
    certificate). On raft and peer ports it closes after the handshake.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            der = s.getpeercert(binary_form=True)
            answer = b""
            if control:
                s.sendall(struct.pack(">I", 8) + b"\x0a\x06status")
                want = None
                while want is None or len(answer) < want:
                    chunk = s.recv(65536)
                    if not chunk:
                        return der, b""
                    answer += chunk
                    if want is None and len(answer) >= 4:
                        want = 4 + struct.unpack(">I", answer[:4])[0]
                        if want > 1 << 20:
                            raise AssertionError("control answer of %d bytes" % want)
            return der, answer


class ClusterRotateTest(ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        d = os.path.join(cls.env.dir, "pki0")
        cls.ca0 = d
        pki(d, "ca")
        for i in (1, 2, 3):
            pki(d, "node", str(i), days=NODE_DAYS)
        pki(d, "operator", "alice")
        live = os.path.join(cls.env.dir, "live")
        os.makedirs(live)
        os.chmod(live, 0o755)
        cls.live = live
        cls.rotations = 0
        shutil.copyfile(os.path.join(d, "ca.pem"), os.path.join(live, "ca.pem"))
        os.chmod(os.path.join(live, "ca.pem"), 0o644)
        for i in (1, 2, 3):
            for ext, mode in (("pem", 0o644), ("key", 0o600)):
                p = os.path.join(live, "node-%d.%s" % (i, ext))
                shutil.copyfile(os.path.join(d, "node-%d.%s" % (i, ext)), p)
                os.chmod(p, mode)
        cls.saved_env = harness.ctl_env_push(os.path.join(d, "operator-alice"),
                                             os.path.join(d, "ca.pem"))
        c = Cluster(cls.env, 3)
        for node in c.nodes:
            node.overrides = {s: dict(kv) for s, kv in node.overrides.items()}
            node.overrides["cluster_tls"] = {
                "ca_file": os.path.join(live, "ca.pem"),
                "cert_file": os.path.join(live, "node-%d.pem" % node.id),
                "key_file": os.path.join(live, "node-%d.key" % node.id)}
            node.write_config()
        return c

    @classmethod
    def use_operator(cls, base, ca):
        """use_operator - hamrctl (and served_cert) present BASE.pem/.key and trust ca."""
        harness.ctl_env_push(base, ca)

    @classmethod
    def tearDownClass(cls):
        harness.ctl_env_pop(getattr(cls, "saved_env", None))
        super().tearDownClass()

    # --- helpers ------------------------------------------------------------

    def node_files(self, node):
        return node.tls()

    def new_node_cert(self, node, ca_dir, days):
        """new_node_cert - a new key and certificate for node from ca_dir's CA, in a new directory.

        make-pki.sh never overwrites, and signs with DIR/ca.key: the CA's two
        files are copied into the new directory first.
        """
        type(self).rotations += 1
        d = os.path.join(self.env.dir, "rot-%d-node%d" % (self.rotations, node.id))
        os.makedirs(d)
        for name in ("ca.pem", "ca.key"):
            shutil.copyfile(os.path.join(ca_dir, name), os.path.join(d, name))
        pki(d, "node", str(node.id), days=days)
        return os.path.join(d, "node-%d.pem" % node.id), os.path.join(d, "node-%d.key" % node.id)

    def hup(self, node, pattern, what):
        """hup - SIGHUP node; wait (bounded) for pattern in its log after now; the match."""
        mark = len(node.proc.log_text())
        node.check_alive()
        node.proc.popen.send_signal(signal.SIGHUP)

        def logged():
            node.check_alive()
            return pattern.search(node.proc.log_text()[mark:])

        m = wait_for(logged, RELOAD_BOUND, "%s to log %s after SIGHUP" % (node.name, what))
        cluster_log("%s SIGHUP: %s" % (node.name, m.group(0)))
        return m

    def assert_reloaded(self, node, days, ca_days=None):
        """assert_reloaded - SIGHUP; the log names a certificate of `days` days (CA ca_days)."""
        m = self.hup(node, RELOADED, "\"cluster TLS reloaded\"")
        # Whole days left of a certificate made moments ago: days - 1 (or days).
        self.assertIn(int(m.group(1)), (days - 1, days), "%s: %s" % (node.name, m.group(0)))
        if ca_days is not None:
            self.assertIn(int(m.group(2)), (ca_days - 1, ca_days),
                          "%s: %s" % (node.name, m.group(0)))

    def assert_serves(self, node, cert_pem):
        """assert_serves - new connections to node's control, raft and peer ports show cert_pem.

        The raft and peer ports take node certificates only: the client
        presents the next node's (files every node trusts at each step here).
        """
        want = fingerprint(der_of(cert_pem))
        ca = os.environ["HAMRCTL_CA"]
        files = self.node_files(self.cluster.node(node.id % 3 + 1))
        ports = [("control", node.control_port, os.environ["HAMRCTL_CERT"],
                  os.environ["HAMRCTL_KEY"]),
                 ("raft", node.raft_port, files["cert_file"], files["key_file"])]
        if node.peer_port:
            ports.append(("peer", node.peer_port, files["cert_file"], files["key_file"]))
        for name, port, cert, key in ports:
            got, answer = served_cert(node.host, port, ca, cert, key, control=name == "control")
            self.assertEqual(fingerprint(got), want, "%s's %s port shows another certificate "
                             "than %s" % (node.name, name, cert_pem))
            if name == "control":
                self.assertRegex(answer, rb"leader|follower", "%s: status over TLS" % node.name)

    def send_through(self, nodes, tag):
        """send_through - one message through each node, no retry; wait for each in the sink."""
        for node in nodes:
            tid = new_test_id("%s-%s" % (tag, node.name))
            rcpt = "rot@example.com"
            msg = make_message(tid, "rot@example.org", [rcpt])
            res = send_message(node.smtp_port, "rot@example.org", [rcpt], msg, host=node.host,
                               timeout=40)
            self.assertReply(res, 250, "2.0.0", "%s answered %r" % (node.name, res))
            (rec,) = self.cluster.sink.wait_test_id(tid, timeout=30)
            self.assertEqual(rec["sha256_after_received"], sha256_hex(msg))

    def fresh_follower(self):
        """fresh_follower - a follower that has not led yet, else any follower.

        The others hold no peer connection to a node that never led (the
        followers forward to the leader only), so once it leads they must
        open new ones, with the certificates of the moment. Connections to a
        node that led before stay open (idle for minutes) and are used again.
        """
        leader = self.cluster.wait_leader()
        led = set().union(*self.cluster.leader_terms().values())
        followers = [n for n in self.cluster.nodes if n is not leader]
        return next((n for n in followers if n.id not in led), followers[0])

    def open_peer_conns(self, node):
        """open_peer_conns - ids of the nodes with a peer connection open to node, from its
        log ("peer hello" opens one, "peer connection ended/closed" of that address ends it)."""
        text = node.proc.log_text()
        events = sorted([(m.start(), m.group(1), int(m.group(2)))
                         for m in PEER_HELLO.finditer(text)] +
                        [(m.start(), m.group(1), None) for m in PEER_GONE.finditer(text)])
        conns = {}
        for _, addr, node_id in events:
            if node_id is None:
                conns.pop(addr, None)
            else:
                conns[addr] = node_id
        return set(conns.values())

    def transfer_and_forward(self, tag, target=None):
        """transfer_and_forward - leadership to target (default: fresh_follower); a message
        forwarded through each follower; each follower that held no peer connection to the
        target (all of them, when it never led) opened one (logged "peer hello" after the
        transfer). Returns the transfer's wall time."""
        target = target or self.fresh_follower()
        followers = [n for n in self.cluster.nodes if n is not target]
        must_open = {n.id for n in followers} - self.open_peer_conns(target)
        mark = len(target.proc.log_text())
        t = time.time()
        self.assertIs(self.cluster.transfer(target, timeout=30), target)
        self.send_through(followers, tag)
        hellos = {int(m.group(2)) for m in PEER_HELLO.finditer(target.proc.log_text()[mark:])}
        cluster_log("transfer to %s: new peer connections from %s (expected from %s)"
                    % (target.name, sorted(hellos), sorted(must_open)))
        self.assertLessEqual(must_open, hellos,
                             "new peer connections to the new leader %s" % target.name)
        return t

    def start_load(self, prefix):
        self.load = cluster.LoadGen(self.cluster, prefix, threads=4, max_messages=100000,
                                    max_seconds=300).start()
        self.load.wait_ok(20, 60)
        return self.load

    def keep_loading(self, load):
        """keep_loading - let the load run on: 15 new 250s, and ROTATION_PAUSE seconds in all."""
        after = time.monotonic()
        load.wait_ok(15, 30, after=after)
        cluster.pause(ROTATION_PAUSE - (time.monotonic() - after))

    def window(self):
        """window - the start of a rotation window: (monotonic time, log_marks)."""
        return time.monotonic(), self.cluster.log_marks()

    def assert_clean_window(self, load, begin):
        """assert_clean_window - from begin (a window()) to now: every attempt of load that
        overlaps got 250 (enough of them), no leader was elected, and no follower lost a
        peer connection (open connections go on through a reload)."""
        t0, marks = begin
        t1 = time.monotonic()
        window = [a for a in load.attempts if a.t_end >= t0 and a.t_start <= t1]
        bad = [a for a in window if not a.ok]
        cluster_log("rotation window %.1fs: %d attempts, %d not 250"
                    % (t1 - t0, len(window), len(bad)))
        self.assertEqual(bad, [], "during the rotation: %s" % bad[:10])
        self.assertGreaterEqual(len([a for a in window if a.ok]), 10,
                                "too little load during the rotation")
        self.assertEqual(self.cluster.leader_terms(since=marks), {},
                         "a leader was elected during the rotation")
        for node in self.cluster.nodes:
            lost = re.findall(r"peer connection lost .*", node.proc.log_text()[marks[node.id]:])
            self.assertEqual(lost, [], "%s during the rotation" % node.name)

    def finish(self, load, name, events):
        """finish - stop the load; no 5xx anywhere; the oracle (nothing lost)."""
        load.wait_ok(10, 30, after=time.monotonic())
        load.stop()
        self.assertEqual([a for a in load.attempts if a.permfail], [])
        return cluster.oracle_run(self, self.cluster, load, name, events=events,
                                  timeout=cluster.LEASE_TIME * 3 + 60)

    # --- tests --------------------------------------------------------------

    def test_a_node_certs(self):
        load = self.start_load("rot-a")
        w0 = self.window()
        for node in self.cluster.nodes:
            files = self.node_files(node)
            cert, key = self.new_node_cert(node, self.ca0, ROT_DAYS)
            self.assertNotEqual(der_of(cert), der_of(files["cert_file"]))
            install(key, files["key_file"])
            install(cert, files["cert_file"])
            self.assert_reloaded(node, ROT_DAYS)
            self.assert_serves(node, cert)
            self.keep_loading(load)
        self.assert_clean_window(load, w0)
        event = self.transfer_and_forward("rot-a-after")
        self.finish(load, "rotate-nodes", [event])

    def test_b_broken_file(self):
        load = self.start_load("rot-b")
        node = self.fresh_follower()
        files = self.node_files(node)
        old = files["cert_file"] + ".old"
        shutil.copyfile(files["cert_file"], old)
        cert, key = self.new_node_cert(node, self.ca0, FIX_DAYS)
        with open(cert, "rb") as f:
            pem = f.read()
        w0 = self.window()
        install(key, files["key_file"])
        install(cert, files["cert_file"], data=pem[:len(pem) // 2])
        m = self.hup(node, RELOAD_FAILED, "the failed reload")
        self.assertIn(files["cert_file"], m.group(1))
        # The old certificate stays: new connections get it, mail goes through.
        self.assert_serves(node, old)
        self.send_through([node], "rot-b-broken")
        self.keep_loading(load)
        self.assert_clean_window(load, w0)
        # And as leader, with new peer connections from the others to it.
        event = self.transfer_and_forward("rot-b-lead", target=node)
        w2 = self.window()
        install(cert, files["cert_file"])
        self.assert_reloaded(node, FIX_DAYS)
        self.assert_serves(node, cert)
        self.keep_loading(load)
        self.assert_clean_window(load, w2)
        self.finish(load, "rotate-broken", [event])

    def test_c_ca(self):
        ca1 = os.path.join(self.env.dir, "pki1")
        pki(ca1, "ca", ca_days=CA1_DAYS)
        pki(ca1, "operator", "bob")
        ca0_pem, ca1_pem = os.path.join(self.ca0, "ca.pem"), os.path.join(ca1, "ca.pem")
        both = os.path.join(self.env.dir, "ca0+ca1.pem")
        with open(both, "wb") as out:
            for p in (ca0_pem, ca1_pem):
                with open(p, "rb") as f:
                    out.write(f.read())
        load = self.start_load("rot-c")
        w0 = self.window()
        # 1: every node trusts both CAs (hamrctl too, before any node shows a new one).
        self.use_operator(os.path.join(self.ca0, "operator-alice"), both)
        for node in self.cluster.nodes:
            install(both, self.node_files(node)["ca_file"])
            self.assert_reloaded(node, self.cert_days(node), 3650)
            self.keep_loading(load)
        # 2: every node (and the operator) gets a certificate of the new CA.
        self.use_operator(os.path.join(ca1, "operator-bob"), both)
        for node in self.cluster.nodes:
            files = self.node_files(node)
            cert, key = self.new_node_cert(node, ca1, CA1_NODE_DAYS)
            install(key, files["key_file"])
            install(cert, files["cert_file"])
            self.assert_reloaded(node, CA1_NODE_DAYS, 3650)
            self.assert_serves(node, cert)
            self.keep_loading(load)
        # 3: the new CA alone; a certificate of the old one is refused from now on.
        self.use_operator(os.path.join(ca1, "operator-bob"), ca1_pem)
        for node in self.cluster.nodes:
            install(ca1_pem, self.node_files(node)["ca_file"])
            self.assert_reloaded(node, CA1_NODE_DAYS, CA1_DAYS)
            self.assert_serves(node, self.node_files(node)["cert_file"])
            self.keep_loading(load)
        self.assert_clean_window(load, w0)
        for node in self.cluster.nodes:
            try:
                _, answer = served_cert(node.host, node.control_port, both,
                                        os.path.join(self.ca0, "operator-alice.pem"),
                                        os.path.join(self.ca0, "operator-alice.key"),
                                        control=True)
            except (ssl.SSLError, ConnectionResetError):
                answer = b""
            self.assertEqual(answer, b"", "%s still takes a certificate of the old CA"
                             % node.name)
        event = self.transfer_and_forward("rot-c-after")
        self.finish(load, "rotate-ca", [event])

    def cert_days(self, node):
        """cert_days - whole days of validity of node's configured certificate (openssl)."""
        out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in",
                              self.node_files(node)["cert_file"]], capture_output=True,
                             check=True, text=True)
        end = ssl.cert_time_to_seconds(out.stdout.strip().split("=", 1)[1])
        return int(round((end - time.time()) / 86400.0))


if __name__ == "__main__":
    unittest.main(verbosity=2)
