#!/usr/bin/python3
"""test_control.py - the control channel of real hamrd processes: the Unix socket, and TCP
over mutual TLS on the cluster PKI at an IPv6 control address.

ControlSocketTest (one node; its TCP control is off, so only the socket can answer):
  a  hamrctl -c CONFIG, with no address, asks over [listen] control_socket; the file
     is a socket of mode 0660 owned by the account hamrd runs as and its group;
     status says the cluster channels are in plaintext
  b  as root: a user whose group is that account's may use it; one outside it gets
     "Permission denied" and exit 1
  c  kill -9 leaves the file; the restart replaces it (logged) and hamrctl reaches
     it; a clean stop removes it, and hamrctl then says there is no such file
  d  a second hamrd given the same socket exits 1: "another process listens on"
ControlTlsClusterTest (three voters with [cluster_tls] on make-pki.sh certificates,
  [listen] control on [::1]; hamrctl gets an operator's certificate from HAMRCTL_*):
  e  every node names the leader's control address bracketed, "[::1]:PORT"
  f  transfer asked of a follower over TLS: it redirects, hamrctl follows to
     "[::1]:PORT" with the same certificate; then from another follower's socket
  g  no certificate, another CA's operator and a node's certificate are refused:
     hamrctl's errors, the node's answer, hamr_control_refused_total{reason}
  h  rotation: status and /metrics give the days left and notAfter of node 1's
     certificate and the CA as the files say; a 10-day certificate in its place and
     SIGHUP: status says "(renew soon)", hamr_cluster_tls_days_left and
     _reloads_total follow, the log warns, and node 1 still takes mail

Needs ::1 (skips without it). Security: replies are untrusted text, only compared.
"""

import os
import pwd
import re
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from cluster import Cluster, ClusterTestCase, cluster_log  # noqa: E402
from harness import field, ipv6_loopback, wait_for  # noqa: E402

MAKE_PKI = os.path.join(harness.REPO, "deploy", "make-pki.sh")


def cert_time(pem, which="enddate"):
    """cert_time - a certificate file's notAfter ("enddate") or notBefore ("startdate") in
    Unix seconds, as the openssl command reads it."""
    out = subprocess.run(["openssl", "x509", "-noout", "-" + which, "-in", pem], check=True,
                         capture_output=True, text=True).stdout
    return int(ssl.cert_time_to_seconds(out.strip().split("=", 1)[1]))


def run_ctl(args, env=None, user=None, timeout=20):
    """run_ctl - hamrctl ARGS (as user: (uid, gid) with no other group); (rc, stdout, stderr)."""
    argv = [harness.hamrctl_path()] + list(args)
    if user is not None:
        argv = ["setpriv", "--reuid=%d" % user[0], "--regid=%d" % user[1],
                "--clear-groups"] + argv
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                         env=env)
    return out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")


class ControlSocketTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.node = cls.env.node(node_id=1, overrides={"listen": {"control": ""}})
        cls.sock = os.path.join(cls.node.data_dir, "control.sock")
        cls.start_node()

    @classmethod
    def start_node(cls):
        """start_node - start hamrd and wait until hamrctl -c (the socket) says leader."""
        cls.node.start(wait=False)

        def leader():
            cls.node.check_alive()
            rc, out, _ = run_ctl(["-c", cls.node.conf_path, "--json", "status"])
            return rc == 0 and '"state": "leader"' in out
        wait_for(leader, 45, "hamrctl -c over the control socket to say leader", interval=0.2)

    def test_a_socket_no_address(self):
        rc, out, err = run_ctl(["-c", self.node.conf_path, "status"])
        self.assertEqual(rc, 0, err)
        self.assertIn("node:        1 (leader)", out)
        self.assertRegex(out, r"\ncluster tls: node:1, certificate expires in \d+ days, CA in \d+ "
                              r"days\n")
        st = os.lstat(self.sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(st.st_mode & 0o7777, 0o660)
        if harness.RUN_USER:
            pw = pwd.getpwnam(harness.RUN_USER)
            self.assertEqual((st.st_uid, st.st_gid), (pw.pw_uid, pw.pw_gid))
        else:
            self.assertEqual(st.st_uid, os.geteuid())
        # -s names the same socket.
        rc, out, err = run_ctl(["-s", self.sock, "version"])
        self.assertEqual(rc, 0, err)
        self.assertIn("hamrd ", out)

    @unittest.skipUnless(os.geteuid() == 0, "needs root: runs hamrctl as other users")
    def test_b_socket_group(self):
        pw = pwd.getpwnam(harness.RUN_USER)
        other = pwd.getpwnam("daemon")
        self.assertNotEqual(other.pw_gid, pw.pw_gid)
        rc, out, err = run_ctl(["-s", self.sock, "version"], user=(other.pw_uid, pw.pw_gid))
        self.assertEqual(rc, 0, "a member of %s's group: %s" % (harness.RUN_USER, err))
        rc, out, err = run_ctl(["-s", self.sock, "version"], user=(other.pw_uid, other.pw_gid))
        self.assertEqual(rc, 1, out)
        self.assertIn("hamrctl: cannot connect to control socket %s: Permission denied"
                      % self.sock, err)

    def test_c_stale_socket_replaced(self):
        self.node.kill9()
        self.assertTrue(os.path.exists(self.sock), "kill -9 leaves the socket file")
        rc, _, err = run_ctl(["-c", self.node.conf_path, "status"])
        self.assertEqual(rc, 1)
        self.assertIn("Connection refused", err)
        self.start_node()
        self.assertIn("control socket ./control.sock: left by a process that is gone; "
                      "replacing it", self.node.proc.log_text())
        self.assertEqual(os.lstat(self.sock).st_mode & 0o7777, 0o660)
        self.assertEqual(self.node.stop(), 0)
        self.assertFalse(os.path.exists(self.sock), "a clean stop removes the socket")
        rc, _, err = run_ctl(["-c", self.node.conf_path, "status"])
        self.assertEqual(rc, 1)
        self.assertIn("hamrctl: cannot connect to control socket %s: No such file or directory "
                      "(is hamrd running" % self.sock, err)
        self.start_node()

    def test_d_live_socket_refused(self):
        other = self.env.node(node_id=1, name="second",
                              overrides={"listen": {"control": "", "control_socket": self.sock}})
        other.start(wait=False)
        rc = other.proc.popen.wait(30)
        self.assertEqual(rc, 1)
        self.assertIn("control: another process listens on %s" % self.sock,
                      other.proc.log_text())
        rc, _, err = run_ctl(["-c", self.node.conf_path, "status"])
        self.assertEqual(rc, 0, err)


@unittest.skipUnless(ipv6_loopback(), "no ::1 here")
class ControlTlsClusterTest(ClusterTestCase):
    @classmethod
    def pki(cls, *args):
        subprocess.run([MAKE_PKI] + list(args), check=True, stdout=subprocess.DEVNULL)

    @classmethod
    def make_cluster(cls):
        d = os.path.join(cls.env.dir, "pki")
        cls.pki_dir = d
        cls.pki(d, "ca")
        for i in (1, 2, 3):
            cls.pki(d, "node", str(i))
        cls.pki(d, "operator", "alice")
        d2 = os.path.join(cls.env.dir, "pki2")
        cls.pki(d2, "ca")
        cls.pki(d2, "operator", "mallory")
        cls.both_ca = os.path.join(cls.env.dir, "both-ca.pem")
        with open(cls.both_ca, "w") as out:
            for p in (os.path.join(d, "ca.pem"), os.path.join(d2, "ca.pem")):
                with open(p) as f:
                    out.write(f.read())
        cls.saved_env = harness.ctl_env_push(os.path.join(d, "operator-alice"),
                                             os.path.join(d, "ca.pem"))
        c = Cluster(cls.env, 3)
        c.add_http()
        for node in c.nodes:
            node.overrides = {s: dict(kv) for s, kv in node.overrides.items()}
            node.overrides["listen"]["control"] = "[::1]:%d" % node.control_port
            node.overrides["cluster_tls"] = {
                "ca_file": os.path.join(d, "ca.pem"),
                "cert_file": os.path.join(d, "node-%d.pem" % node.id),
                "key_file": os.path.join(d, "node-%d.key" % node.id)}
            node.control_addr = "[::1]:%d" % node.control_port
            node.write_config()
        return c

    @classmethod
    def tearDownClass(cls):
        harness.ctl_env_pop(getattr(cls, "saved_env", None))
        super().tearDownClass()

    def metrics(self, node):
        return node.metrics()

    def refused(self, node):
        """refused - {reason: count} of hamr_control_refused_total on node's /metrics."""
        return node.counters("hamr_control_refused_total", "reason")

    def tls_series(self, node):
        """tls_series - {(name, cert label or ""): value} of node's hamr_cluster_tls_* series."""
        return {(m.group(1), m.group(2) or ""): int(float(m.group(3))) for m in re.finditer(
            r'(?m)^(hamr_cluster_tls_\w+)(?:\{cert="(\w+)"\})? (\S+)$', self.metrics(node))}

    def test_e_published_bracketed(self):
        leader = self.cluster.wait_leader()
        want = "[::1]:%d" % leader.control_port
        for node in self.cluster.nodes:
            self.assertEqual(field(node.status(), "leader_control"), want, node.name)

    def test_f_redirect_over_tls(self):
        leader = self.cluster.wait_leader()
        follower = [n for n in self.cluster.nodes if n is not leader][0]
        rc, out, err = run_ctl(["-a", "[::1]:%d" % follower.control_port, "transfer",
                                str(follower.id)], timeout=30)
        self.assertEqual(rc, 0, err)
        cluster_log("transfer through %s (TLS): %s" % (follower.name, out.strip()))
        self.assertIs(self.cluster.wait_leader(30, exclude=(leader,)), follower)
        # From another follower's socket: the redirect goes over TCP with TLS.
        other = [n for n in self.cluster.nodes if n is not follower][0]
        rc, out, err = run_ctl(["-c", other.conf_path, "transfer", str(other.id)], timeout=30)
        self.assertEqual(rc, 0, err)
        self.assertIs(self.cluster.wait_leader(30, exclude=(follower,)), other)

    def test_g_refused_and_counted(self):
        node = self.cluster.nodes[0]
        addr = "[::1]:%d" % node.control_port
        before = self.refused(node)
        plain = harness.ctl_plain_env()
        rc, _, err = run_ctl(["-a", addr, "status"], env=plain)
        self.assertEqual(rc, 1)
        self.assertIn("hamrctl: this control port takes TLS with an operator certificate", err)
        d2 = os.path.join(self.env.dir, "pki2")
        rc, _, err = run_ctl(["-a", addr, "--cert", os.path.join(d2, "operator-mallory.pem"),
                              "--key", os.path.join(d2, "operator-mallory.key"),
                              "--ca", self.both_ca, "status"], env=plain)
        self.assertEqual(rc, 1)
        self.assertIn("hamrctl: %s refused the TLS connection: " % addr, err)
        # A node's certificate (hamrctl refuses to send one): a TLS client of our own.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(os.path.join(self.pki_dir, "ca.pem"))
        ctx.load_cert_chain(os.path.join(self.pki_dir, "node-2.pem"),
                            os.path.join(self.pki_dir, "node-2.key"))
        with socket.create_connection(("::1", node.control_port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(struct.pack(">I", 8) + b"\x0a\x06status")
                answer = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
        self.assertIn(b"control over TCP takes operator certificates only", answer)
        self.assertIn(b"this one is node:2", answer)

        def counted():
            after = self.refused(node)
            return (after.get("tls", 0) - before.get("tls", 0) == 2 and
                    after.get("identity", 0) - before.get("identity", 0) == 1)
        wait_for(counted, 10, "hamr_control_refused_total: tls +2, identity +1")
        log = node.proc.log_text()
        self.assertIn("identity=node:2 event=refused", log)

    def test_h_rotation_days_left(self):
        node = self.cluster.node(1)
        pem = os.path.join(self.pki_dir, "node-1.pem")
        key = os.path.join(self.pki_dir, "node-1.key")
        ca_end = cert_time(os.path.join(self.pki_dir, "ca.pem"))
        tls = field(node.status(), "cluster_tls")
        self.assertEqual(tls["identity"], "node:1")
        self.assertFalse(tls["plaintext"])
        self.assertIn(tls["cert_days_left"], (824, 825))  # make-pki.sh's default, 825 days
        self.assertEqual(tls["cert_not_after"], cert_time(pem))
        self.assertEqual(tls["ca_not_after"], ca_end)
        self.assertEqual(tls["reloads"], 0)
        series = self.tls_series(node)
        self.assertIn(series[("hamr_cluster_tls_days_left", "node")], (824, 825))
        self.assertGreaterEqual(series[("hamr_cluster_tls_days_left", "ca")], 3649)
        self.assertEqual(series[("hamr_cluster_tls_not_after_seconds", "node")], cert_time(pem))
        self.assertEqual(series[("hamr_cluster_tls_not_after_seconds", "ca")], ca_end)
        self.assertEqual(series[("hamr_cluster_tls_reloads_total", "")], 0)

        # Rotation: a 10-day certificate of the same CA in place of the old one, then SIGHUP.
        os.remove(pem)
        os.remove(key)
        subprocess.run([MAKE_PKI, self.pki_dir, "node", "1"], check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, HAMR_PKI_DAYS="10"))
        harness.give_to_run_user(pem)
        harness.give_to_run_user(key)
        # Past its first second, 10 days is 9 whole days left (and stays so for the test).
        begin = cert_time(pem, "startdate")
        wait_for(lambda: time.time() >= begin + 1, 5, "the clock past notBefore")
        node.proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: field(node.status(), "cluster_tls")["reloads"] == 1, 20,
                 "node 1 to reload its cluster certificate")
        tls = field(node.status(), "cluster_tls")
        self.assertEqual(tls["cert_days_left"], 9)
        self.assertEqual(tls["cert_not_after"], cert_time(pem))
        rc, out, err = run_ctl(["-a", "[::1]:%d" % node.control_port, "status"])
        self.assertEqual(rc, 0, err)
        self.assertIn("\ncluster tls: node:1, certificate expires in 9 days (renew soon), CA in ",
                      out)
        series = self.tls_series(node)
        self.assertEqual(series[("hamr_cluster_tls_days_left", "node")], 9)
        self.assertEqual(series[("hamr_cluster_tls_not_after_seconds", "node")], cert_time(pem))
        self.assertEqual(series[("hamr_cluster_tls_reloads_total", "")], 1)
        log = "\n".join(line for line in node.proc.log_text().splitlines()
                        if "cluster TLS" in line)
        self.assertIn("cluster TLS reloaded: node:1, certificate expires in 9 days (renew soon)",
                      log)
        self.assertIn("warn node=1 cluster TLS: the certificate of node:1 (%s) expires in 9 days"
                      % pem, log)
        # The cluster goes on: node 1 still takes mail, committed through raft.
        self.cluster.probe(node)


if __name__ == "__main__":
    unittest.main(verbosity=2)
