#!/usr/bin/python3
"""test_cluster_trust.py - strangers, members gone bad and floods at a real cluster's ports,
under load.

The attacker is its own process (tests/integration/trust_attacker.py, or
tests/tools/peer_forge for a real peer client); the cluster is three hamrd
voters with the test PKI (harness.pki_node), a load generator sending all
along, and the oracle at the end (nothing acknowledged lost, nothing
unexpected delivered).

  a  strangers (SECURITY.md N2, R4): at the leader's and a follower's raft
     port, a RequestVote with term 2^62 from a client with no certificate and
     from one with a certificate of another CA (tls); node M's valid
     certificate claiming another id in libraft's handshake (identity); M's
     own claim with a RequestVote of term 2^62 (refused: term out of bounds).
     At the same nodes' peer port: no certificate, another CA's (tls), and
     peer_forge with M's certificate saying hello as another id (identity).
     Each closed, logged on the attacked node with its reason, counted in
     /metrics; no election, the term unchanged; the load gets new 250s.
     What a valid peer may forward (Outcome, Admin, another node's NodeInfo)
     is test_cluster_peer.py's.
  b  the 95-byte packets (entry counts 1, 1 000 000, 0xFFFFFFFF) and a
     handshake address without a NUL (R1, R2), sent by a member with a valid
     certificate to the leader and to a follower: each refused (logged,
     counted), the node stays up, the term does not move, the load goes on.
  c  idle and flood connections (R3, N5): 80 silent connections (above the
     caps of 64) held at each of the leader's raft, peer, control, HTTP and
     SMTP ports; meanwhile both followers keep forwarding (250s through
     them), every node's /health/ready answers 200 and hamrctl gets an
     answer from the leader's control port at the first try (both evict a
     silent connection for a newcomer), and the leader takes mail itself;
     the raft, peer, control
     and HTTP ports close every silent connection within 5 s (+ slack),
     counted as timed_out on raft, peer and control. Then 150 connects that
     each send garbage and close, at each port: the same checks during and
     after.

Security: replies and logs are untrusted text; they are only matched.
"""

import http.client
import json
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from cluster import cluster_log  # noqa: E402
from harness import field, make_message, new_test_id, send_message, wait_for  # noqa: E402

FORGE = os.environ.get("PEER_FORGE", "")
ATTACKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trust_attacker.py")
MAKE_PKI = os.path.join(harness.REPO, "deploy", "make-pki.sh")

HOLD = 80  # silent connections per port: above every cap (64)
FLOOD = 150  # garbage connects per port
# Deadlines of the ports that are held (SECURITY.md R3, N5; node/http.h; node/control.h),
# plus what a loaded 2-core machine may add.
HANDSHAKE_S = 5.0
SLACK_S = 4.0
TERM_BIG = 1 << 62
RAFT_REFUSED = re.compile(r'raft connection peer=(\S+) id=(\d+) cert_id=(\d+) event=refused '
                          r'reason="([^"]*)"')


class ClusterTrustTest(cluster.ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        if not os.access(FORGE, os.X_OK):
            raise unittest.SkipTest("PEER_FORGE (tests/tools/peer_forge) is not built")
        # A second CA and its node 2: a stranger with a certificate that looks right.
        cls.other_pki = os.path.join(cls.env.dir, "other-pki")
        for args in (["ca"], ["node", "2"]):
            subprocess.run(["bash", MAKE_PKI, cls.other_pki] + args, check=True,
                           stdout=subprocess.DEVNULL)
        c = cluster.Cluster(cls.env, 3)
        c.add_http()
        return c

    # --- what the nodes say ------------------------------------------------

    def metrics(self, node):
        return node.metrics()

    def counters(self, node, name, label="event"):
        return node.counters(name, label)

    def raft_port(self, node):
        return self.counters(node, "hamr_raft_port_connections_total")

    def peer_port(self, node):
        return self.counters(node, "hamr_peer_port_connections_total")

    def health(self, node, path="/health/ready"):
        """health - the status code of GET path on node's HTTP port (None: no answer)."""
        conn = http.client.HTTPConnection(node.host, node.http_port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def terms(self):
        """terms - {node id: term} of every node, asked now (all must answer)."""
        sts = self.cluster.statuses()
        self.assertTrue(all(s is not None for s in sts.values()), sts)
        return {i: int(field(s, "term", 0) or 0) for i, s in sts.items()}

    def new_log(self, node, mark):
        return node.proc.log_text()[mark:]

    # --- the attacker --------------------------------------------------------

    def tls_args(self, who):
        """tls_args - the attacker's TLS options: "none" (no certificate, verifies the node),
        "other" (node 2 of another CA), or a member's id (its valid certificate)."""
        ca = harness.pki_node(1)["ca_file"]
        if who == "none":
            return ["--ca", ca]
        if who == "other":
            return ["--ca", ca, "--cert", os.path.join(self.other_pki, "node-2.pem"),
                    "--key", os.path.join(self.other_pki, "node-2.key")]
        files = harness.pki_node(who)
        return ["--ca", ca, "--cert", files["cert_file"], "--key", files["key_file"]]

    def attack(self, mode, port, *args):
        """attack - trust_attacker.py MODE --port PORT ARGS; its JSON result."""
        out = subprocess.run([harness.PYTHON, ATTACKER, mode, "--port", str(port)] + list(args),
                             capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(out.returncode, 0, out.stderr.decode(errors="replace"))
        return json.loads(out.stdout.decode().strip().splitlines()[-1])

    def forge_hello(self, target, cert_of, claim):
        """forge_hello - peer_forge with node cert_of's certificate saying hello as claim."""
        files = harness.pki_node(cert_of)
        out = subprocess.run([FORGE, "--ca", files["ca_file"], "--cert", files["cert_file"],
                              "--key", files["key_file"], "--to", str(target.id),
                              "%s:%d" % (target.host, target.peer_port), str(claim),
                              "cluster-level", "99"],
                             capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        text = (out.stdout + out.stderr).decode(errors="replace").strip()
        self.assertNotIn("status=0 ", text + " ", "peer_forge got an entry committed: " + text)
        return text

    def expect_raft_refusal(self, target, event, reason, mark, run, claim=None, cert_id=None):
        """expect_raft_refusal - run() attacks target's raft port: the connection is closed,
        the counter event rises by one, and one new log line gives reason (a regex)."""
        before = self.raft_port(target)
        res = run()
        self.assertTrue(res["closed"], "%s: the node did not close: %r" % (event, res))
        wait_for(lambda: self.raft_port(target).get(event, 0) >= before.get(event, 0) + 1, 10,
                 "%s raft_port %s to rise" % (target.name, event))
        after = self.raft_port(target)
        self.assertEqual(after.get(event, 0), before.get(event, 0) + 1, (before, after))
        lines = [m for m in RAFT_REFUSED.finditer(self.new_log(target, mark))
                 if re.search(reason, m.group(4))]
        self.assertTrue(lines, "%s: no log line with reason %r" % (target.name, reason))
        if claim is not None:
            self.assertIn((str(claim), str(cert_id)),
                          [(m.group(2), m.group(3)) for m in lines], "claim and certificate")

    def expect_peer_refusal(self, target, event, pattern, mark, run):
        """expect_peer_refusal - as expect_raft_refusal, at the peer port."""
        before = self.peer_port(target)
        run()
        wait_for(lambda: self.peer_port(target).get(event, 0) >= before.get(event, 0) + 1, 10,
                 "%s peer_port %s to rise" % (target.name, event))
        after = self.peer_port(target)
        self.assertEqual(after.get(event, 0), before.get(event, 0) + 1, (before, after))
        self.assertRegex(self.new_log(target, mark), pattern)

    def assert_no_election(self, terms0, marks, leader):
        self.assertEqual(self.terms(), terms0, "the term moved")
        self.assertEqual(self.cluster.leader_terms(since=marks), {}, "a leader was elected")
        self.assertIs(self.cluster.wait_leader(), leader)

    def start_load(self, prefix, **kw):
        # Paced so that it lasts the whole test (bounded by time and by count).
        self.load = cluster.LoadGen(self.cluster, prefix, threads=3, max_messages=3000,
                                    max_seconds=180, pace=0.2, **kw).start()
        return self.load

    # --- the tests -----------------------------------------------------------

    def test_a_strangers(self):
        leader = self.cluster.wait_leader()
        follower = [n for n in self.cluster.nodes if n is not leader][0]
        load = self.start_load("trust-a")
        load.wait_ok(5, 60)
        terms0 = self.terms()
        marks = self.cluster.log_marks()
        for target in (leader, follower):
            # M: a member that is not the target; it claims the id of the third node.
            member = [n for n in self.cluster.nodes if n is not target][0]
            third = [n for n in self.cluster.nodes if n not in (target, member)][0]
            mark = marks[target.id]
            cluster_log("attacking %s (raft %d, peer %d) as strangers and as %s"
                        % (target.name, target.raft_port, target.peer_port, member.name))
            for who in ("none", "other"):
                self.expect_raft_refusal(
                    target, "tls", r".", mark,
                    lambda who=who: self.attack("raft", target.raft_port, "--payload",
                                                "vote-huge", "--claim", str(member.id),
                                                *self.tls_args(who)))
            self.expect_raft_refusal(
                target, "identity", r"^the handshake claims an id the certificate does not name$",
                mark, lambda: self.attack("raft", target.raft_port, "--payload", "vote-huge",
                                          "--claim", str(third.id), *self.tls_args(member.id)),
                claim=third.id, cert_id=member.id)
            self.expect_raft_refusal(
                target, "refused", r"^term out of bounds$", mark,
                lambda: self.attack("raft", target.raft_port, "--payload", "vote-huge",
                                    "--claim", str(member.id), *self.tls_args(member.id)),
                claim=member.id, cert_id=member.id)
            for who in ("none", "other"):
                self.expect_peer_refusal(
                    target, "tls", r"peer connection refused peer=127\.0\.0\.1:\d+ reason=", mark,
                    lambda who=who: self.attack("tls", target.peer_port, *self.tls_args(who)))
            self.expect_peer_refusal(
                target, "identity",
                r'peer connection refused peer=\S+ node=%d cert=node:%d reason="hello names '
                r'another node than the certificate"' % (third.id, member.id), mark,
                lambda: self.forge_hello(target, member.id, third.id))
            target.check_alive()
        t_after = time.monotonic()
        self.assert_no_election(terms0, marks, leader)
        load.wait_ok(20, 60, after=t_after)
        load.stop()
        cluster.oracle_run(self, self.cluster, load, "trust-strangers")

    def test_b_malformed_from_member(self):
        leader = self.cluster.wait_leader()
        follower = [n for n in self.cluster.nodes if n is not leader][0]
        load = self.start_load("trust-b")
        load.wait_ok(5, 60)
        terms0 = self.terms()
        marks = self.cluster.log_marks()
        identity0 = {n.id: self.raft_port(n).get("identity", 0) for n in self.cluster.nodes}
        cases = [("append95-1", r"^header length does not fit the message type$"),
                 ("append95-1000000", r"^header length does not fit the message type$"),
                 ("append95-4294967295", r"^header length does not fit the message type$"),
                 ("no-nul", r"^handshake: address not NUL-terminated$")]
        for target in (leader, follower):
            member = [n for n in self.cluster.nodes if n is not target][0]
            for kind, reason in cases:
                cluster_log("%s to %s as %s" % (kind, target.name, member.name))
                self.expect_raft_refusal(
                    target, "refused", reason, marks[target.id],
                    lambda kind=kind: self.attack("raft", target.raft_port, "--payload", kind,
                                                  "--claim", str(member.id),
                                                  *self.tls_args(member.id)))
                target.check_alive()
            # Refused by the checker: the certificate and the claim were fine.
            self.assertEqual(self.raft_port(target).get("identity", 0), identity0[target.id])
        t_after = time.monotonic()
        self.assert_no_election(terms0, marks, leader)
        load.wait_ok(20, 60, after=t_after)
        load.stop()
        cluster.oracle_run(self, self.cluster, load, "trust-malformed")

    # --- c: idle and flood ---------------------------------------------------

    def spawn(self, name, *args):
        """spawn - an attacker process (started) whose JSON lines go to a file of the Env."""
        out = os.path.join(self.env.dir, "attacker-%s.jsonl" % name)
        with open(out, "wb") as f:
            proc = subprocess.Popen([harness.PYTHON, ATTACKER] + list(args), stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return proc, out

    def lines(self, spawned, n, timeout):
        """lines - the first n JSON lines of a spawned attacker, waited for (bounded)."""
        proc, out = spawned

        def got():
            with open(out, "rb") as f:
                done = [ln for ln in f.read().split(b"\n") if ln.startswith(b"{")]
            if len(done) >= n:
                return [json.loads(ln) for ln in done[:n]]
            if proc.poll() is not None:
                with open(out, "rb") as f:
                    raise AssertionError("the attacker ended: %r" % f.read()[-2000:])
            return None
        return wait_for(got, timeout, "%d lines from %s" % (n, out), interval=0.1)

    def stop_attackers(self, spawned):
        for proc, _ in spawned.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    def ports_alive(self, leader, followers, t_from, n_ok):
        """ports_alive - followers forward, every node is ready, hamrctl and SMTP reach the
        leader; each within a bound."""
        self.load.wait_ok(n_ok, 30, after=t_from, nodes=followers)
        for f in followers:  # not attacked: they answer at once
            self.assertEqual(self.health(f), 200, "%s /health/ready" % f.name)
        # The leader's HTTP and control ports make room for a newcomer by closing the oldest
        # connection that has asked nothing (TCP_SERVER_CAP_EVICT): they answer at once.
        self.assertEqual(self.health(leader), 200, "the leader's /health/ready")
        self.assertEqual(field(leader.status(), "state"), "leader", "hamrctl at the leader")
        tid = new_test_id("trust-direct")
        msg = make_message(tid, "direct@example.org", ["direct@example.com"])
        res = send_message(leader.smtp_port, "direct@example.org", ["direct@example.com"], msg,
                           host=leader.host, timeout=20)
        self.assertReply(res, 250, "2.0.0", "the leader's own SMTP port: %r" % res)

    def test_c_idle_and_flood(self):
        leader = self.cluster.wait_leader()
        followers = [n for n in self.cluster.nodes if n is not leader]
        load = self.start_load("trust-c", targets=lambda: [n for n in followers
                                                           if n.proc.alive()])
        load.wait_ok(5, 60, nodes=followers)
        terms0 = self.terms()
        marks = self.cluster.log_marks()
        raft0, peer0 = self.raft_port(leader), self.peer_port(leader)
        control0 = self.counters(leader, "hamr_control_refused_total", "reason")
        ports = {"raft": leader.raft_port, "peer": leader.peer_port,
                 "control": leader.control_port, "http": leader.http_port,
                 "smtp": leader.smtp_port}
        procs = {}
        try:
            t_hold = time.monotonic()
            for name, port in ports.items():
                # SMTP from another address: the leader's own SMTP check below comes from
                # 127.0.0.1, and smtpd limits connections per client (50).
                procs[name] = self.spawn("hold-" + name, "hold", "--port", str(port),
                                         "--count", str(HOLD), "--seconds", "45", "--source",
                                         "127.0.0.2" if name == "smtp" else "127.0.0.1")
            opened = {name: self.lines(p, 1, 30)[0] for name, p in procs.items()}
            cluster_log("holding %s" % opened)
            for name, o in opened.items():
                self.assertEqual(o["opened"], HOLD, "%s: %r" % (name, o))
            self.ports_alive(leader, followers, t_hold, 10)
            cluster_log("while held: followers forward, every node ready, hamrctl and SMTP "
                        "reach the leader")
            done = {name: self.lines(p, 2, 60)[1] for name, p in procs.items()
                    if name != "smtp"}
        finally:
            self.stop_attackers(procs)
        cluster_log("held: %s" % {n: (d["closed"], d["open_at_end"],
                                      d["close_after"][-1] if d["close_after"] else None)
                                  for n, d in done.items()})
        for name, d in done.items():
            self.assertEqual(d["open_at_end"], 0, "%s kept silent connections: %r" % (name, d))
            self.assertLessEqual(max(d["close_after"]), HANDSHAKE_S + SLACK_S,
                                 "%s closed its silent connections late: %r" % (name, d))
        raft1, peer1 = self.raft_port(leader), self.peer_port(leader)
        raft_gone = (raft1.get("timed_out", 0) - raft0.get("timed_out", 0) +
                     raft1.get("over_cap", 0) - raft0.get("over_cap", 0))
        self.assertGreaterEqual(raft_gone, HOLD, (raft0, raft1))
        self.assertGreaterEqual(raft1.get("timed_out", 0) - raft0.get("timed_out", 0), HOLD // 2,
                                (raft0, raft1))
        self.assertGreaterEqual(peer1.get("timed_out", 0) - peer0.get("timed_out", 0), HOLD // 2,
                                (peer0, peer1))
        control1 = self.counters(leader, "hamr_control_refused_total", "reason")
        self.assertGreaterEqual(control1.get("timed_out", 0) - control0.get("timed_out", 0),
                                HOLD // 2, (control0, control1))
        log = self.new_log(leader, marks[leader.id])
        self.assertRegex(log, r'raft connection peer=\S+ id=0 cert_id=0 event=refused '
                              r'reason="no TLS handshake in time"')
        self.assertRegex(log, r'peer connection closed peer=\S+ reason="no (TLS handshake|hello) '
                              r'within 5000ms"')
        self.assertRegex(log, r'control connection peer=\S+ event=closed reason="no TLS '
                              r'handshake and request within 5000ms"')

        # A flood of connects that each send garbage and close, at every port.
        t_flood = time.monotonic()
        flooders = {name: self.spawn("flood-" + name, "flood", "--port", str(port), "--count",
                                     str(FLOOD))
                    for name, port in ports.items()}
        try:
            # While they connect: the same checks as under the silent connections.
            self.ports_alive(leader, followers, t_flood, 10)
            flooded = {name: self.lines(p, 1, 90)[0] for name, p in flooders.items()}
        finally:
            self.stop_attackers(flooders)
        cluster_log("flooded: %s" % flooded)
        for name, f in flooded.items():
            # A connection over a cap may be reset before its garbage is out: counted failed.
            self.assertEqual(f["connected"] + f["failed"], FLOOD, "%s: %r" % (name, f))
            self.assertGreaterEqual(f["connected"], FLOOD // 2, "%s: %r" % (name, f))
        self.ports_alive(leader, followers, time.monotonic(), 10)
        raft2 = self.raft_port(leader)
        self.assertGreater(raft2.get("tls", 0), raft1.get("tls", 0), (raft1, raft2))
        for n in self.cluster.nodes:
            n.check_alive()
        self.assert_no_election(terms0, marks, leader)
        load.stop()
        cluster.oracle_run(self, self.cluster, load, "trust-flood")


if __name__ == "__main__":
    unittest.main(verbosity=2)
