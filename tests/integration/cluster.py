"""cluster.py - a hamr cluster of real hamrd processes, a load generator and an oracle.

What it does:
  Cluster   starts N hamrd voters (free ports on 127.0.0.1 or ::1, or fixed ports
            inside network namespaces given by a NetLab) and one recording
            sink as every node's relayhost; waits (bounded) until exactly one
            leader is known by every live node and a test message through
            each node gets 250; finds the leader; kill -9, SIGTERM and
            restart of a node; leadership transfer; waits until every live
            node's queue is empty and all queue digests are equal.
  LoadGen   K client threads, each sending messages with a unique X-Test-Id
            to a node chosen round robin over a target list (by default the
            nodes that take mail: every live node, or the leader alone when
            this hamrd cannot forward). Every attempt is recorded as
            (test_id, node, reply code, reply text, stage, t_start, t_end).
            A 4xx, 5xx or connection error is recorded and the client moves
            on; nothing is resent. Bounded by a message count AND a time.
  oracle    SECURITY.md section 1: after the fault is healed and the queues
            have drained, lost (250 but never delivered), unexpected
            (delivered but never answered 250 and not in doubt), corrupted
            (sha256 after hamr's Received: header differs), duplicates
            (copies per (test id, recipient) beyond the first). Prints one
            summary line per case.
  NetLab    one network namespace per node plus a hub namespace with a
            bridge (10.77.0.0/24, which exists only inside these namespaces);
            the test process's main thread enters the hub, so the sink,
            hamrctl and the load generator talk to the nodes over the bridge.
            nftables rules inside a node's namespace cut it off from chosen
            peers (both ways, or one way only: drop_oneway), or from
            the sink's port on the hub (block_hub_port). Leftover
            namespaces of a crashed earlier run are removed first; this
            run's are removed at teardown and at exit.
  ClusterTestCase  the shape of a cluster test class: one cluster per class
            (make_cluster, started by setUpEnv, closed by tearDownClass),
            the test's load generators (self.load, self.loads) stopped after
            each test, and revive_all to begin a test with every node
            running and taking mail. BalancerTestCase puts HAProxy in front
            of it; NetLabTestCase runs it inside a NetLab.

What it owns: the Env's processes (through harness.Env), the load threads
(stopped and joined by LoadGen.stop), the status monitor thread (stopped by
Cluster.close), and the namespaces named "hamrt-PID-*" (PID: the test
process) with their nft tables. Namespaces of a crashed earlier run (its PID
no longer a partition test) are removed before new ones are made; those of a
run still going are left alone, so runs from several build directories can
go on at once.

Errors: bounded waits raise harness.WaitTimeout; NetLab raises
NetLabUnavailable when namespaces cannot be made (tests skip on it).
Nothing here sleeps without a bound.

Security: replies from hamrd are untrusted text; they are stored and
printed with repr() only.
"""

import atexit
import ctypes
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (CtlError, WaitTimeout, field, make_message, new_test_id,  # noqa: E402
                     send_message, sha256_hex, wait_for)

ELECTION_TIMEOUT = 1.0  # seconds; what every cluster here configures
LEASE_TIME = 10.0  # seconds
MAX_PER_DESTINATION = 10  # hamr's default: connections to one next hop
# Duplicates one leader-changing event may cause (SECURITY.md I5c): each of the
# MAX_PER_DESTINATION connections may have one delivery on the wire and one
# delivered message whose Outcome entry is not committed yet.
DUP_PER_EVENT = 2 * MAX_PER_DESTINATION
# The first copy of a duplicate must have reached the sink this close (seconds,
# wall clock) to a leader-changing event: duplicates only in known windows.
DUP_WINDOW = 3.0

_FORWARDING = None


def cluster_forwarding_supported():
    """cluster_forwarding_supported - does this hamrd take [listen] peer (follower forwarding)?"""
    global _FORWARDING
    if _FORWARDING is None:
        _FORWARDING = harness.config_key_supported("listen", "peer",
                                                   "127.0.0.1:%d" % harness.free_port())
    return _FORWARDING


def cluster_log(text):
    """cluster_log - one line on stderr, with the time, for the ctest output."""
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), text))
    sys.stderr.flush()


class Cluster:
    """Cluster - N voters and one sink in a harness.Env.

    lab: a NetLab (nodes in namespaces) or None (host, free ports).
    host: without a lab, the address of every node and of the sink: 127.0.0.1,
    or an IPv6 literal such as "::1" (raft, peer, control, voters and the
    relayhost are then written bracketed, "[::1]:PORT").
    overrides: {section: {key: value}} applied to every node's config.
    """

    def __init__(self, env, n=3, lab=None, overrides=None, host="127.0.0.1"):
        self.env = env
        self.lab = lab
        self.host = lab.hub_addr if lab else host
        self.forwarding = cluster_forwarding_supported()
        if lab:
            self.sink = env.sink(host=lab.hub_addr, port=2600)
        else:
            self.sink = env.sink(host=host, port=harness.free_port(host))
        overrides = dict(overrides or {})
        delivery = {"lease_time": "%ds" % LEASE_TIME, "retry_min": "1s", "retry_max": "4s",
                    "scan_interval": "200ms"}
        delivery.update(overrides.get("delivery", {}))
        overrides["delivery"] = delivery
        specs = []
        for i in range(1, n + 1):
            if lab:
                host = lab.node_addr(i)
                ports = {"smtp": 2524 + i, "raft": 7000 + i, "control": 7100 + i}
                if self.forwarding:
                    ports["peer"] = 7200 + i
                specs.append((i, host, ports, lab.exec_prefix(i)))
            else:
                ports = {"smtp": harness.free_port(host), "raft": harness.free_port(host),
                         "control": harness.free_port(host)}
                if self.forwarding:
                    ports["peer"] = harness.free_port(host)
                specs.append((i, host, ports, None))
        voters = ", ".join("%d@%s" % (i, harness.hostport(h, ports["raft"]))
                           for i, h, ports, _ in specs)
        if lab:
            overrides.setdefault("smtpd", {})
            overrides["smtpd"] = dict(overrides["smtpd"], relay_networks="%s.0/24" % lab.subnet)
        self.nodes = []
        for i, h, ports, prefix in specs:
            node = env.node(node_id=i, host=h, ports=ports, voters=voters,
                            relayhost_port=self.sink.port,
                            relayhost_host=lab.hub_addr if lab else host,
                            overrides=overrides, argv_prefix=prefix)
            self.nodes.append(node)
        self.probes = []  # test ids of readiness probes (delivered like any other mail)
        self._statuses = {}  # node id -> (monotonic time, status dict or None)
        self._status_lock = threading.Lock()
        self._monitor_stop = threading.Event()
        self._monitor = None
        self.history = []  # (monotonic time, node id, state, term, leader_id)

    # --- lifecycle -------------------------------------------------------

    def start(self, timeout=90):
        """start - sink, every node, then wait_ready; returns the leader."""
        self.sink.start()
        for node in self.nodes:
            node.start(wait=False)
        self._monitor = threading.Thread(target=self._monitor_run, name="cluster-monitor",
                                         daemon=True)
        self._monitor.start()
        try:
            return self.wait_ready(timeout)
        except BaseException:
            self.close()
            raise

    def close(self):
        """close - stop the monitor thread (the Env stops the processes)."""
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(10)

    def node(self, node_id):
        return self.nodes[node_id - 1]

    def live_nodes(self):
        return [n for n in self.nodes if n.proc is not None and n.proc.alive()]

    def kill9(self, node):
        cluster_log("kill -9 %s" % node.name)
        node.kill9()

    def stop(self, node):
        """stop - SIGTERM; a clean stop must exit 0."""
        cluster_log("SIGTERM %s" % node.name)
        rc = node.stop()
        if rc != 0:
            raise AssertionError("%s exited with status %s on SIGTERM" % (node.name, rc))

    def restart(self, node):
        cluster_log("start %s" % node.name)
        node.start(wait=False)

    # --- status ------------------------------------------------------------

    def status(self, node):
        """status - the node's status dict, or None if it cannot be asked."""
        if node.proc is None or not node.proc.alive():
            return None
        try:
            return node.status()
        except CtlError:
            return None

    def statuses(self):
        """statuses - {node id: status or None} of every node, asked now."""
        out = {n.id: self.status(n) for n in self.nodes}
        now = time.monotonic()
        with self._status_lock:
            for i, s in out.items():
                self._statuses[i] = (now, s)
        return out

    def _monitor_run(self):
        """_monitor_run - poll every node's status every 0.3 s; record leadership changes."""
        last = {}
        while not self._monitor_stop.wait(0.3):
            for i, s in self.statuses().items():
                key = (field(s, "state"), field(s, "term"), field(s, "leader_id")) if s else None
                if key != last.get(i):
                    last[i] = key
                    if key:
                        self.history.append((time.monotonic(), i) + key)

    def log_marks(self):
        """log_marks - {node id: length of its log now}; for leader_terms(since=...)."""
        return {n.id: len(n.proc.log_text()) if n.proc is not None else 0 for n in self.nodes}

    def leader_terms(self, since=None):
        """leader_terms - {term: set of node ids} of every "consensus event=leader term=N"
        line in the nodes' logs (after the offsets of since, a log_marks() result).

        Exhaustive, unlike the monitor's sampled history: hamrd logs the line once
        each time it finds itself leader of a new term.
        """
        out = {}
        for n in self.nodes:
            if n.proc is None:
                continue
            text = n.proc.log_text()[(since or {}).get(n.id, 0):]
            for m in re.finditer(r"consensus event=leader term=(\d+)", text):
                out.setdefault(int(m.group(1)), set()).add(n.id)
        return out

    def max_term(self):
        """max_term - the highest term any live node reports now (0 if none answers)."""
        return max((int(field(s, "term", 0) or 0) for s in self.statuses().values() if s),
                   default=0)

    def history_since(self, t0):
        """history_since - the monitor's (time, node, state, term, leader) records after t0."""
        return [h for h in list(self.history) if h[0] >= t0]

    def leader_hint(self):
        """leader_hint - the node that most recently said leader with the highest term, or None."""
        with self._status_lock:
            best = None
            for i, (_, s) in self._statuses.items():
                if s and field(s, "state") == "leader":
                    term = int(field(s, "term", 0) or 0)
                    if best is None or term > best[0]:
                        best = (term, i)
        if best is None:
            return None
        node = self.node(best[1])
        return node if node.proc is not None and node.proc.alive() else None

    def agreed_leader(self, nodes=None):
        """agreed_leader - the leader if exactly one of nodes (default: the live ones) is
        leader and all of them name it; else None."""
        sts = {n.id: self.status(n) for n in (nodes or self.live_nodes())}
        if not sts or any(s is None for s in sts.values()):
            return None
        leaders = [i for i, s in sts.items() if field(s, "state") == "leader"]
        if len(leaders) != 1:
            return None
        if any(int(field(s, "leader_id", 0) or 0) != leaders[0] for s in sts.values()):
            return None
        return self.node(leaders[0])

    def wait_leader(self, timeout=30, exclude=(), nodes=None):
        """wait_leader - until agreed_leader(nodes) is a node not in exclude; return it."""
        def ok():
            self.env.check_nodes_alive()
            leader = self.agreed_leader(nodes)
            return leader if leader is not None and leader not in exclude else None

        return wait_for(ok, timeout, "one leader known by every live node", interval=0.1)

    def entry_nodes(self):
        """entry_nodes - where clients send: every live node (the leader alone without
        forwarding)."""
        if self.forwarding:
            return self.live_nodes()
        leader = self.leader_hint()
        return [leader] if leader else []

    def add_http(self):
        """add_http - give every node an HTTP listener (/health, /metrics) on a free port."""
        for node in self.nodes:
            # In a NetLab each node has an address of its own, which the test's
            # namespace cannot bind to probe a port: a fixed one is free there.
            node.http_port = 7300 + node.id if self.lab else harness.free_port(node.host)
            node.overrides = {s: dict(kv) for s, kv in node.overrides.items()}
            node.overrides.setdefault("listen", {})["http"] = harness.hostport(node.host,
                                                                               node.http_port)
            node.write_config()

    def health(self, node):
        """health - (status code, body) of node's GET /health/ready (add_http); (None, error)
        if it cannot be asked."""
        try:
            with socket.create_connection((node.host, node.http_port), timeout=5) as s:
                s.sendall(b"GET /health/ready HTTP/1.0\r\n\r\n")
                data = b""
                while len(data) < 65536:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError as e:
            return None, str(e)
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        return (int(m.group(1)) if m else None), body.decode("utf-8", "replace").strip()

    def probe_send_options(self, node):
        """probe_send_options - extra send_message arguments for a probe through node."""
        return {}

    def probe(self, node, timeout=30):
        """probe - a test message through node until it gets 250 (bounded); returns its test id."""
        tid = new_test_id("probe-%s" % node.name)
        rcpt = "probe@example.com"
        msg = make_message(tid, "probe@example.org", [rcpt])
        last = []

        def accepted():
            node.check_alive()
            res = send_message(node.smtp_port, "probe@example.org", [rcpt], msg, host=node.host,
                               timeout=40, **self.probe_send_options(node))
            last[:] = [res]
            return res.code == 250

        try:
            wait_for(accepted, timeout, "a 250 through %s" % node.name, interval=0.3)
        except WaitTimeout as e:
            raise WaitTimeout("%s; last reply %r" % (e, last[0] if last else None))
        self.probes.append(tid)
        return tid

    def wait_ready(self, timeout=90, nodes=None):
        """wait_ready - one agreed leader, then a 250 through each node (the leader only without
        forwarding). Returns the leader."""
        deadline = time.monotonic() + timeout
        leader = self.wait_leader(timeout)
        targets = nodes or (self.live_nodes() if self.forwarding else [leader])
        for node in targets:
            self.probe(node, max(5.0, deadline - time.monotonic()))
        return self.wait_leader(max(5.0, deadline - time.monotonic()))

    def transfer(self, target=None, timeout=20):
        """transfer - hamrctl transfer [ID] on the leader; wait until the new leader is agreed."""
        old = self.wait_leader(timeout)
        args = [str(target.id)] if target else []
        old.ctl("transfer", *args, timeout=timeout)
        def moved():
            leader = self.agreed_leader()
            if leader is None or leader is old or (target and leader is not target):
                return None
            return leader

        what = "leadership to move to %s" % (target.name if target else "another node")
        return wait_for(moved, timeout, what, interval=0.1)

    def wait_converged(self, timeout=90):
        """wait_converged - every live node: queue empty, same digest, same applied index.

        Returns {node id: status}.
        """
        def converged():
            self.env.check_nodes_alive()
            sts = {n.id: self.status(n) for n in self.live_nodes()}
            if any(s is None for s in sts.values()):
                return None
            if any(int(field(s, "queue_messages", 0) or 0) != 0 for s in sts.values()):
                return None
            if len({field(s, "queue_digest") for s in sts.values()}) != 1:
                return None
            if len({field(s, "applied_index") for s in sts.values()}) != 1:
                return None
            return sts

        try:
            return wait_for(converged, timeout, "every queue empty and every digest equal",
                            interval=0.25)
        except WaitTimeout as e:
            detail = []
            for n in self.nodes:
                s = self.status(n)
                detail.append("%s: %s" % (n.name, None if s is None else {
                    k: field(s, k) for k in ("state", "term", "leader_id", "applied_index",
                                             "queue_messages", "queue_rcpts_leased",
                                             "queue_digest")}))
            raise WaitTimeout("%s\n  %s" % (e, "\n  ".join(detail)))

    def wait_caught_up(self, node, timeout=60):
        """wait_caught_up - node's applied index reaches what the leader had applied.

        The leader is asked first and the node second, so under load the node
        only has to reach a point the leader had already passed; comparing
        digests here would race with every new entry (the oracle compares
        them once the load has stopped and the queues are empty).
        """
        def caught_up():
            self.env.check_nodes_alive()
            leader = self.agreed_leader()
            if leader is None:
                return False
            ls = self.status(leader)
            ns = self.status(node)
            if ls is None or ns is None:
                return False
            return int(field(ns, "applied_index", 0)) >= int(field(ls, "applied_index", 0))

        return wait_for(caught_up, timeout, "%s to catch up with the leader" % node.name,
                        interval=0.2)


class Attempt:
    """Attempt - one SMTP transaction of the load generator."""

    __slots__ = ("test_id", "node", "code", "text", "stage", "t_start", "t_end", "sha256", "rcpt",
                 "queue_id")

    def __init__(self, test_id, node, rcpt, sha):
        self.test_id = test_id
        self.node = node
        self.rcpt = rcpt
        self.sha256 = sha
        self.code = None
        self.text = ""
        self.stage = "connect"
        self.t_start = 0.0
        self.t_end = 0.0
        self.queue_id = None  # hamr's queue id, from "queued as" in the 250

    @property
    def ok(self):
        return self.code == 250 and self.stage == "done"

    @property
    def indoubt(self):
        """indoubt - the connection failed or timed out once DATA had begun: maybe accepted."""
        return self.code is None and self.stage == "data"

    @property
    def tempfail(self):
        return self.code is not None and 400 <= self.code < 500

    @property
    def permfail(self):
        return self.code is not None and self.code >= 500

    @property
    def connerr(self):
        return self.code is None and self.stage != "data"

    def __repr__(self):
        return "Attempt(%s node=%s stage=%s code=%s text=%r t=%.2f..%.2f)" % (
            self.test_id, self.node, self.stage, self.code, self.text[:120], self.t_start,
            self.t_end)


def load_filler(tid, n):
    """load_filler - about n bytes (at least one line) of 78-byte lines naming tid, CRLF ended."""
    out = []
    size = 0
    i = 0
    while size < n or not out:
        head = "%s fill %06d " % (tid, i)
        line = head + "abcdefghijklmnopqrstuvwxyz"[i % 26] * max(1, 76 - len(head)) + "\r\n"
        out.append(line)
        size += len(line)
        i += 1
    return "".join(out)


class LoadGen:
    """LoadGen - threads sending unique messages until count or time runs out, or stop().

    targets: a callable returning the nodes to send to now (round robin);
    default cluster.entry_nodes. pace: seconds between one client's
    transactions (keeps a 2-core machine responsive). body_bytes: when
    non-zero, each body is filled up to about that many bytes with lines
    carrying its test id (load_filler); by default bodies are a few lines.
    """

    def __init__(self, cluster, prefix, threads=6, max_messages=2000, max_seconds=120,
                 targets=None, pace=0.05, smtp_timeout=45, body_bytes=0):
        self.cluster = cluster
        self.prefix = "%s-%s" % (prefix, os.urandom(3).hex())
        self.n_threads = threads
        self.max_messages = max_messages
        self.max_seconds = max_seconds
        self.targets = targets or cluster.entry_nodes
        self.pace = pace
        self.smtp_timeout = smtp_timeout
        self.body_bytes = body_bytes
        self.attempts = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._count = 0
        self._rr = 0
        self.t_begin = None

    def start(self):
        self.t_begin = time.monotonic()
        for k in range(self.n_threads):
            t = threading.Thread(target=self._run, args=(k,), name="load-%d" % k, daemon=True)
            self._threads.append(t)
            t.start()
        cluster_log("load %s: %d clients started" % (self.prefix, self.n_threads))
        return self

    def stop(self, timeout=None):
        """stop - no new transactions; wait for the running ones (bounded by the SMTP timeout)."""
        self._stop.set()
        deadline = time.monotonic() + (timeout or self.smtp_timeout * 2 + 10)
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError("load threads still running: %s" % alive)
        cluster_log("load %s: stopped after %d attempts" % (self.prefix, len(self.attempts)))
        return self

    def running(self):
        return any(t.is_alive() for t in self._threads)

    def _next(self):
        """_next - (sequence number, node) or None when the count is used up."""
        with self._lock:
            if self._count >= self.max_messages:
                return None
            self._count += 1
            seq = self._count
        nodes = self.targets()
        if not nodes:
            return seq, None
        with self._lock:
            self._rr += 1
            return seq, nodes[self._rr % len(nodes)]

    def _run(self, k):
        rnd = random.Random("%s-%d" % (self.prefix, k))
        deadline = self.t_begin + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            nxt = self._next()
            if nxt is None:
                return
            seq, node = nxt
            if node is None:  # no leader known yet: wait for one a little
                self._stop.wait(0.1)
                continue
            tid = "%s-%d-%05d" % (self.prefix, k, seq)
            rcpt = "u%d@example.com" % rnd.randrange(1000)
            lines = ["load message %s line %d %s" % (tid, i, os.urandom(8).hex())
                     for i in range(rnd.randrange(1, 20))]
            if rnd.random() < 0.2:
                lines.insert(rnd.randrange(len(lines)), ".dot-leading line")
            body = "\r\n".join(lines) + "\r\n"
            if self.body_bytes:
                body += load_filler(tid, self.body_bytes - len(body))
            msg = make_message(tid, "load@example.org", [rcpt], subject="load %s" % tid,
                               body=body)
            a = Attempt(tid, node.id, rcpt, sha256_hex(msg))
            a.t_start = time.monotonic()
            res = send_message(node.smtp_port, "load@example.org", [rcpt], msg, host=node.host,
                               timeout=self.smtp_timeout)
            a.t_end = time.monotonic()
            a.code, a.text, a.stage = res.code, res.text, res.stage
            a.queue_id = res.queue_id
            with self._lock:
                self.attempts.append(a)
            self._stop.wait(self.pace)

    # --- views on the attempts -----------------------------------------

    def ok(self):
        return [a for a in self.attempts if a.ok]

    def select(self, pred):
        return [a for a in self.attempts if pred(a)]

    def first_ok_after(self, t, nodes=None):
        """first_ok_after - seconds from t to the end of the first 250 of a transaction begun
        after t (optionally only through nodes); None if there is none."""
        ids = {n.id for n in nodes} if nodes else None
        ends = [a.t_end for a in self.attempts
                if a.ok and a.t_start >= t and (ids is None or a.node in ids)]
        return min(ends) - t if ends else None

    def wait_ok(self, n, timeout, after=None, nodes=None):
        """wait_ok - until n transactions begun after `after` got 250 (through nodes)."""
        after = self.t_begin if after is None else after
        ids = {x.id for x in nodes} if nodes else None

        def enough():
            self.cluster.env.check_nodes_alive()
            with self._lock:
                got = sum(1 for a in self.attempts
                          if a.ok and a.t_start >= after and (ids is None or a.node in ids))
            return got >= n

        return wait_for(enough, timeout, "%d new 250s from the load" % n, interval=0.1)


class OracleResult:
    """OracleResult - the sets of SECURITY.md section 1 for one load."""

    def __init__(self):
        self.sent = self.ok = self.tempfail = self.permfail = self.indoubt = self.connerr = 0
        self.delivered = 0
        self.lost = []
        self.unexpected = []
        self.corrupted = []
        self.duplicates = {}
        self.first_copy = {}  # duplicated test id -> sink time of its first copy
        self.details = {}

    @property
    def dup(self):
        return sum(self.duplicates.values())

    def outside_windows(self, events, window):
        """outside_windows - duplicated ids whose first copy arrived far from every event."""
        return sorted(t for t, first in self.first_copy.items()
                      if not any(e - window <= first <= e + window for e in events))

    def summary(self):
        return ("sent=%d ok=%d tempfail=%d indoubt=%d connerr=%d 5xx=%d delivered=%d lost=%d "
                "unexpected=%d corrupted=%d dup=%d"
                % (self.sent, self.ok, self.tempfail, self.indoubt, self.connerr, self.permfail,
                   self.delivered, len(self.lost), len(self.unexpected), len(self.corrupted),
                   self.dup))


def oracle_check(attempts, records, prefixes):
    """oracle_check - compare attempts with sink records whose test id has one of prefixes."""
    prefixes = tuple(p + "-" for p in prefixes)
    r = OracleResult()
    by_id = {a.test_id: a for a in attempts}
    r.sent = len(attempts)
    r.ok = sum(a.ok for a in attempts)
    r.tempfail = sum(a.tempfail for a in attempts)
    r.permfail = sum(a.permfail for a in attempts)
    r.indoubt = sum(a.indoubt for a in attempts)
    r.connerr = sum(a.connerr for a in attempts)
    seen = {}
    for rec in records:
        tid = rec.get("test_id") or ""
        if tid.startswith(prefixes):
            seen.setdefault((tid, rec.get("rcpt")), []).append(rec)
    delivered_ids = {tid for tid, _ in seen}
    r.delivered = len(delivered_ids)
    r.lost = sorted(a.test_id for a in attempts if a.ok and a.test_id not in delivered_ids)
    for (tid, rcpt), recs in sorted(seen.items()):
        a = by_id.get(tid)
        if a is None or not (a.ok or a.indoubt) or rcpt != a.rcpt:
            r.unexpected.append(tid)
            r.details[tid] = repr(a)
            continue
        if any(x.get("sha256_after_received") != a.sha256 for x in recs):
            r.corrupted.append(tid)
        if len(recs) > 1:
            r.duplicates[tid] = len(recs) - 1
            r.first_copy[tid] = min(float(x.get("time", 0)) for x in recs)
    for tid in r.lost:
        r.details[tid] = repr(by_id[tid])
    return r


def oracle_run(test, cluster, loads, name, events=(), timeout=120):
    """oracle_run - wait for convergence, check the oracle with test's assertions, print
    the summary line; returns the OracleResult.

    loads: a LoadGen or a list of them. events: wall-clock times (time.time())
    of the leader-changing faults injected; duplicates must number at most
    DUP_PER_EVENT per event, and each one's first copy must have arrived
    within DUP_WINDOW seconds of an event.
    """
    dup_bound = DUP_PER_EVENT * len(events)
    loads = loads if isinstance(loads, (list, tuple)) else [loads]
    statuses = cluster.wait_converged(timeout)
    attempts = [a for load in loads for a in load.attempts]
    res = oracle_check(attempts, cluster.sink.records(), [load.prefix for load in loads])
    digests = {i: (field(s, "queue_digest") or "")[:12] for i, s in statuses.items()}
    cluster_log("oracle %s: %s (dup bound %d) digests=%s" % (name, res.summary(), dup_bound,
                                                             digests))
    sys.stderr.write("%s: %s\n" % (name, res.summary()))
    test.assertEqual(res.lost, [], "acknowledged but never delivered: %s"
                     % [res.details.get(t) for t in res.lost[:10]])
    test.assertEqual(res.unexpected, [], "delivered but never acknowledged nor in doubt: %s"
                     % [res.details.get(t) for t in res.unexpected[:10]])
    test.assertEqual(res.corrupted, [], "delivered with a different body")
    test.assertLessEqual(res.dup, dup_bound, "duplicates %s exceed the bound %d"
                         % (res.duplicates, dup_bound))
    stray = res.outside_windows(events, DUP_WINDOW)
    test.assertEqual(stray, [], "duplicates whose first copy is not within %.0fs of a fault: %s"
                     % (DUP_WINDOW, {t: res.first_copy[t] for t in stray[:10]}))
    test.assertGreater(res.ok, 0, "the load got no 250 at all")
    return res


# --- network namespaces ---------------------------------------------------

CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


class NetLabUnavailable(Exception):
    """NetLabUnavailable - namespaces or nft cannot be used here (the tests skip)."""


def _run(argv, check=True, timeout=20):
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), out.returncode,
                                                out.stderr.decode(errors="replace").strip()))
    return out


def _setns(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if _LIBC.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns %s: %s" % (path, os.strerror(err)))
    finally:
        os.close(fd)


class NetLab:
    """NetLab - namespaces hamrt-PID-hub (bridge, 10.77.0.1) and hamrt-PID-nI (10.77.0.1I).

    PID is this test process, so runs from several build directories can
    coexist: each has its own hub and bridge, and 10.77.0.0/24 exists only
    inside each run's own namespaces.
    """

    PREFIX = "hamrt-"
    TABLE = "hamrt_partition"
    OWNER_MARK = "test_cluster_partition"  # in the command line of a run that owns namespaces
    # Every script whose runs own namespaces (OWNER_MARK among them). Any cluster test
    # script ("test_cluster_", e.g. of another checkout with scripts this one does not
    # know) counts as well: its namespaces are never taken for a crashed run's. So
    # does the fault campaign (tests/campaign/campaign.py).
    OWNER_MARKS = (OWNER_MARK, "test_cluster_flap", "test_cluster_bodies", "test_cluster_spread",
                   "test_cluster_", "campaign.py")

    def __init__(self, n=3):
        self.n = n
        self.run = "%s%d-" % (self.PREFIX, os.getpid())
        self.hub = self.run + "hub"
        self.subnet = "10.77.0"
        self.hub_addr = "10.77.0.1"
        self._orig_ns = None
        self._entered = False
        self.cut = {}  # node index -> set of peer indexes it cannot reach

    def node_ns(self, i):
        return "%sn%d" % (self.run, i)

    def node_addr(self, i):
        return "%s.%d" % (self.subnet, 10 + i)

    def exec_prefix(self, i):
        return ["ip", "netns", "exec", self.node_ns(i)]

    @classmethod
    def check_available(cls):
        """check_available - raise NetLabUnavailable with the reason if this cannot work."""
        if os.geteuid() != 0:
            raise NetLabUnavailable("network namespaces need root")
        for tool in ("ip", "nft"):
            if not any(os.access(os.path.join(d, tool), os.X_OK)
                       for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin")):
                raise NetLabUnavailable("%s is not installed (apt-get install %s)"
                                        % (tool, "iproute2" if tool == "ip" else "nftables"))
        probe = "%s%d-probe" % (cls.PREFIX, os.getpid())
        _run(["ip", "netns", "del", probe], check=False)
        out = _run(["ip", "netns", "add", probe], check=False)
        if out.returncode != 0:
            raise NetLabUnavailable("ip netns add is not permitted: %s"
                                    % out.stderr.decode(errors="replace").strip())
        try:
            nft = _run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"], check=False)
            if nft.returncode != 0:
                raise NetLabUnavailable("nft does not work in a namespace: %s"
                                        % nft.stderr.decode(errors="replace").strip())
        finally:
            _run(["ip", "netns", "del", probe], check=False)

    @classmethod
    def _run_alive(cls, pid):
        """_run_alive - is pid a running partition test (the owner of hamrt-PID-*)?"""
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read()
            return any(mark.encode() in argv for mark in cls.OWNER_MARKS)
        except OSError:
            return False

    @classmethod
    def remove_leftovers(cls):
        """remove_leftovers - delete the hamrt-PID-* namespaces of runs that no longer exist.

        The hamrd and sink processes still inside them (started by that
        crashed run) are killed by pid first; namespaces of a live run are
        left alone.
        """
        out = _run(["ip", "netns", "list"], check=False)
        for line in out.stdout.decode(errors="replace").splitlines():
            name = line.split()[0] if line.split() else ""
            m = re.match(r"^%s(\d+)-" % re.escape(cls.PREFIX), name)
            if not m or cls._run_alive(int(m.group(1))):
                continue
            killed = 0
            for pid in _run(["ip", "netns", "pids", name], check=False).stdout.split():
                try:
                    with open("/proc/%d/cmdline" % int(pid), "rb") as f:
                        argv = f.read()
                    if b"hamrd" in argv or b"sink.py" in argv:
                        os.kill(int(pid), 9)
                        killed += 1
                except (OSError, ValueError):
                    pass
            _run(["ip", "netns", "del", name], check=False)
            cluster_log("removed leftover namespace %s (%d processes killed)" % (name, killed))

    def setup(self):
        """setup - create the hub, the bridge and one namespace per node; enter the hub."""
        self.check_available()
        self.remove_leftovers()
        atexit.register(self.teardown)
        hub = self.hub
        _run(["ip", "netns", "add", hub])
        _run(["ip", "-n", hub, "link", "set", "lo", "up"])
        _run(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", hub, "addr", "add", "%s/24" % self.hub_addr, "dev", "br0"])
        _run(["ip", "-n", hub, "link", "set", "br0", "up"])
        for i in range(1, self.n + 1):
            ns = self.node_ns(i)
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", hub, "link", "add", "h%d" % i, "type", "veth", "peer", "name",
                  "eth0", "netns", ns])
            _run(["ip", "-n", hub, "link", "set", "h%d" % i, "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", "%s/24" % self.node_addr(i), "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        self._orig_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        _setns("/run/netns/%s" % hub)
        self._entered = True
        # The bridge forwards once its ports are up; wait until every node answers ping.
        if _has_ping():
            for i in range(1, self.n + 1):
                addr = self.node_addr(i)
                wait_for(lambda a=addr: _run(["ping", "-c", "1", "-W", "1", a],
                                             check=False).returncode == 0,
                         15, "%s to answer ping" % addr, interval=0.2)
        cluster_log("netlab: hub %s, nodes %s" % (
            self.hub_addr, ", ".join(self.node_addr(i) for i in range(1, self.n + 1))))
        return self

    def isolate(self, i, peers):
        """isolate - node i drops every packet to and from the given peer nodes."""
        peers = sorted(set(peers) - {i})
        self.cut[i] = set(peers)
        addrs = ", ".join(self.node_addr(p) for p in peers)
        rules = ("table inet %s {\n"
                 " chain input { type filter hook input priority 0; ip saddr { %s } drop; }\n"
                 " chain output { type filter hook output priority 0; ip daddr { %s } drop; }\n"
                 "}\n" % (self.TABLE, addrs, addrs))
        self._replace_rules(i, rules)

    def drop_oneway(self, i, peers, direction="output"):
        """drop_oneway - node i drops only the packets going one way between it and peers.

        direction "output": from i to the peers; "input": from the peers to i.
        Replaces node i's rules (as isolate does); heal removes them.
        """
        if direction not in ("input", "output"):
            raise ValueError("direction must be input or output")
        peers = sorted(set(peers) - {i})
        self.cut[i] = set(peers)
        addrs = ", ".join(self.node_addr(p) for p in peers)
        match = "ip daddr" if direction == "output" else "ip saddr"
        rules = ("table inet %s {\n"
                 " chain %s { type filter hook %s priority 0; %s { %s } drop; }\n"
                 "}\n" % (self.TABLE, direction, direction, match, addrs))
        self._replace_rules(i, rules)

    def refuse_ports(self, i, peers, ports):
        """refuse_ports - node i's TCP connections to the given ports of peers are refused
        (a reset at once, so the caller fails fast instead of waiting for a timeout); the
        rest of the traffic between them, raft's included, still flows. Replaces node i's
        rules (as isolate does); heal removes them."""
        peers = sorted(set(peers) - {i})
        self.cut[i] = set(peers)
        addrs = ", ".join(self.node_addr(p) for p in peers)
        dports = ", ".join(str(p) for p in sorted(ports))
        rules = ("table inet %s {\n"
                 " chain output { type filter hook output priority 0; "
                 "ip daddr { %s } tcp dport { %s } reject with tcp reset; }\n"
                 "}\n" % (self.TABLE, addrs, dports))
        self._replace_rules(i, rules)

    def block_hub_port(self, i, port, how="reset"):
        """block_hub_port - node i's TCP connections to port on the hub (where the sink
        listens) fail: "reset" refuses them at once, "drop" lets them time out. Everything
        else, the cluster's traffic included, still flows. Replaces node i's rules (as
        isolate does); heal removes them."""
        if how not in ("reset", "drop"):
            raise ValueError("how must be reset or drop")
        self.cut[i] = set()
        verdict = "reject with tcp reset" if how == "reset" else "drop"
        rules = ("table inet %s {\n"
                 " chain output { type filter hook output priority 0; "
                 "ip daddr %s tcp dport %d %s; }\n"
                 "}\n" % (self.TABLE, self.hub_addr, port, verdict))
        self._replace_rules(i, rules)

    def _replace_rules(self, i, rules):
        """_replace_rules - node i's table of rules becomes rules (nft -f text)."""
        self._nft(i, ["delete", "table", "inet", self.TABLE], check=False)
        out = subprocess.run(self.exec_prefix(i) + ["nft", "-f", "-"], input=rules.encode(),
                             capture_output=True, timeout=20)
        if out.returncode != 0:
            raise RuntimeError("nft in %s: %s" % (self.node_ns(i),
                                                  out.stderr.decode(errors="replace")))

    def heal(self, i=None):
        """heal - remove the partition rules of node i (every node if None)."""
        for j in ([i] if i else range(1, self.n + 1)):
            self._nft(j, ["delete", "table", "inet", self.TABLE], check=False)
            self.cut.pop(j, None)

    def _nft(self, i, args, check=True):
        return _run(self.exec_prefix(i) + ["nft"] + args, check=check)

    def teardown(self):
        """teardown - heal, leave the hub, delete the namespaces (idempotent)."""
        if self._entered and self._orig_ns is not None:
            try:
                _setns("/proc/self/fd/%d" % self._orig_ns)
            except OSError as e:
                cluster_log("netlab: cannot return to the original namespace: %s" % e)
            os.close(self._orig_ns)
            self._orig_ns = None
            self._entered = False
        out = _run(["ip", "netns", "list"], check=False)
        names = [ln.split()[0] for ln in out.stdout.decode(errors="replace").splitlines()
                 if ln.split()]
        for name in names:
            if name.startswith(self.run):
                _run(["ip", "netns", "del", name], check=False)


def _has_ping():
    return any(os.access(os.path.join(d, "ping"), os.X_OK) for d in ("/usr/bin", "/bin"))


def socket_reachable(host, port, timeout=1.0):
    """socket_reachable - can a TCP connection be opened now?"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- HAProxy in front of a cluster -----------------------------------------

class BalancerTarget:
    """BalancerTarget - what LoadGen needs of a node (id, host, smtp_port), for the balancer."""

    def __init__(self, host, port):
        self.id = 0
        self.name = "haproxy"
        self.host = host
        self.smtp_port = port


class Balancer:
    """Balancer - Debian's haproxy in front of a ProxiedCluster, as deploy/haproxy.cfg.

    mode tcp on 127.0.0.1:port, balance leastconn, send-proxy-v2 from the
    source address cluster.proxy_source, option httpchk GET /health/ready on
    each node's [listen] http port (inter 1s fall 2 rise 2). Its admin stats
    socket lives in the Env's directory; server_states() reads "show stat".
    Owns the haproxy process (through the Env).
    """

    BIN = "/usr/sbin/haproxy"

    def __init__(self, env, cluster, port=None, inter_ms=1000):
        self.env = env
        self.cluster = cluster
        self.port = port or harness.free_port()
        self.host = "127.0.0.1"
        self.inter_ms = inter_ms
        self.cfg_path = os.path.join(env.dir, "haproxy.cfg")
        self.sock_path = os.path.join(env.dir, "haproxy.sock")
        self.proc = None

    @classmethod
    def available(cls):
        return os.access(cls.BIN, os.X_OK)

    def write_config(self):
        servers = "\n".join(
            "    server %s %s:%d check port %d" % (n.name, n.host, n.smtp_port, n.http_port)
            for n in self.cluster.nodes)
        text = ("# written by tests/integration/cluster.py (as deploy/haproxy.cfg)\n"
                "global\n"
                "    maxconn 2000\n"
                "    stats socket %s mode 600 level admin\n"
                "    log stdout format raw local0\n"
                "defaults\n"
                "    mode tcp\n"
                "    log global\n"
                "    option tcplog\n"
                "    retries 3\n"
                "    option redispatch\n"
                "    timeout connect 2s\n"
                "    timeout client 2m\n"
                "    timeout server 2m\n"
                "    timeout check 2s\n"
                "frontend smtp\n"
                "    bind %s:%d\n"
                "    default_backend hamr\n"
                "backend hamr\n"
                "    balance leastconn\n"
                "    source %s\n"
                "    option httpchk GET /health/ready\n"
                "    http-check expect status 200\n"
                "    default-server send-proxy-v2 inter %dms fall 2 rise 2\n"
                "%s\n" % (self.sock_path, self.host, self.port, self.cluster.proxy_source,
                          self.inter_ms, servers))
        with open(self.cfg_path, "w") as f:
            f.write(text)

    def start(self, timeout=20):
        """start - check the config, run haproxy in the foreground, wait for its stats socket."""
        self.write_config()
        out = subprocess.run([self.BIN, "-c", "-f", self.cfg_path], capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=30)
        if out.returncode != 0:
            raise AssertionError("haproxy -c: %s" % out.stdout.decode(errors="replace")
                                 + out.stderr.decode(errors="replace"))
        self.proc = self.env.spawn("haproxy", [self.BIN, "-db", "-f", self.cfg_path])
        wait_for(lambda: self.proc.check_alive() or self.server_states(), timeout,
                 "haproxy's stats socket", interval=0.1)
        cluster_log("haproxy on %s:%d in front of %s" % (
            self.host, self.port, ", ".join(n.name for n in self.cluster.nodes)))
        return self

    def target(self):
        return BalancerTarget(self.host, self.port)

    def command(self, line):
        """command - one line to the admin socket; the answer as text."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.sock_path)
            s.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode("utf-8", "replace")

    def server_states(self):
        """server_states - {server name: status} of backend hamr ("UP", "DOWN", "UP 1/2", ...)."""
        lines = self.command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        cols = lines[0][2:].split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(cols, line.split(",")))
            if row.get("pxname") == "hamr" and row.get("svname") not in ("FRONTEND", "BACKEND"):
                out[row["svname"]] = row.get("status", "")
        return out

    def wait_state(self, node, state, timeout=20):
        """wait_state - until haproxy reports node's status as exactly state ("UP"/"DOWN")."""
        return wait_for(lambda: self.server_states().get(node.name) == state, timeout,
                        "haproxy to mark %s %s" % (node.name, state), interval=0.1)


class ProxiedCluster(Cluster):
    """ProxiedCluster - a Cluster whose nodes take SMTP only with a PROXY header from
    proxy_source (proxy_networks = proxy_source/32) and serve /health on an http port.

    Probes of single nodes speak PROXY v1 from proxy_source themselves, as the
    balancer would; everything else goes through a Balancer.
    """

    def __init__(self, env, n=3, proxy_source="127.0.0.2", overrides=None):
        self.proxy_source = proxy_source
        overrides = dict(overrides or {})
        smtpd = dict(overrides.get("smtpd", {}))
        smtpd.update({"proxy_protocol": "on", "proxy_networks": "%s/32" % proxy_source})
        overrides["smtpd"] = smtpd
        super().__init__(env, n, overrides=overrides)
        self.add_http()

    def probe_send_options(self, node):
        """probe_send_options - a probe comes with a PROXY v1 header from proxy_source."""
        return {"source": self.proxy_source,
                "proxy_header": harness.proxy_v1_header("127.0.0.1", server_port=node.smtp_port)}


def gap_max(times, t0, t1):
    """gap_max - the longest interval without an event in [t0, t1] (times: sorted or not)."""
    pts = [t0] + sorted(t for t in times if t0 <= t <= t1) + [t1]
    return max(b - a for a, b in zip(pts, pts[1:]))


def pause(seconds):
    """pause - let the load run for a while (an Event wait: bounded)."""
    threading.Event().wait(max(0.0, seconds))


class ClusterTestCase(harness.HamrTestCase):
    """ClusterTestCase - one cluster per class; each test's load generators stopped after it.

    setUpEnv starts the cluster make_cluster returns (by default three
    voters); tearDownClass closes it. A test keeps the LoadGen it starts in
    self.load, or several in self.loads: tearDown stops those still running
    before the logs of a failed test are printed. revive_all restarts the
    nodes an earlier test killed and waits until every one takes mail.
    """

    cluster = None

    @classmethod
    def make_cluster(cls):
        """make_cluster - the class's cluster, configured but not started."""
        return Cluster(cls.env, 3)

    @classmethod
    def setUpEnv(cls):
        cls.cluster = cls.make_cluster()
        cls.cluster.start()

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "cluster", None):
            cls.cluster.close()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.load = None
        self.loads = []

    def revive_all(self, timeout=60):
        """revive_all - restart every node that is not running; wait until all are ready."""
        for node in self.cluster.nodes:
            if node.proc is None or not node.proc.alive():
                self.cluster.restart(node)
        self.cluster.wait_ready(timeout)

    def status_text(self, node):
        """status_text - what "hamrctl status" prints for node (text, not JSON)."""
        argv = [harness.hamrctl_path(), "-s", harness.hostport(node.host, node.control_port),
                "status"]
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=15,
                             env=node.ctl_env())
        self.assertEqual(out.returncode, 0, out.stderr.decode(errors="replace"))
        return out.stdout.decode("utf-8", "replace")

    def stop_loads(self):
        """stop_loads - stop self.load and every load in self.loads that still runs."""
        for load in [getattr(self, "load", None)] + list(getattr(self, "loads", [])):
            if load is not None and load.running():
                load.stop()

    def tearDown(self):
        self.stop_loads()
        super().tearDown()


class BalancerTestCase(ClusterTestCase):
    """BalancerTestCase - a ProxiedCluster behind HAProxy (cls.lb); skips without haproxy."""

    lb = None

    @classmethod
    def make_cluster(cls):
        if not Balancer.available():
            raise unittest.SkipTest("haproxy is not installed (apt-get install haproxy)")
        return ProxiedCluster(cls.env, 3)

    @classmethod
    def setUpEnv(cls):
        super().setUpEnv()
        cls.lb = Balancer(cls.env, cls.cluster).start()


class NetLabTestCase(ClusterTestCase):
    """NetLabTestCase - one 3-node cluster in network namespaces per class (NetLab).

    Skips with the reason when namespaces or nft cannot be used; every test
    starts healed with a ready cluster and ends healed before its loads
    stop; the namespaces are removed at the end.
    """

    lab = None

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(harness.hamrd_path()):
            raise unittest.SkipTest("hamrd not built (%s)" % harness.hamrd_path())
        try:
            NetLab.check_available()
        except NetLabUnavailable as e:
            raise unittest.SkipTest("network namespaces unavailable: %s" % e)
        cls.lab = NetLab(3)
        try:
            cls.lab.setup()
            super().setUpClass()
        except BaseException:
            cls.lab.teardown()
            raise

    @classmethod
    def make_cluster(cls):
        return Cluster(cls.env, 3, lab=cls.lab)

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.lab:
                cls.lab.heal()
            super().tearDownClass()
        finally:
            if cls.lab:
                cls.lab.teardown()

    def setUp(self):
        super().setUp()
        self.lab.heal()
        self.cluster.wait_ready(60)

    def tearDown(self):
        self.lab.heal()
        super().tearDown()
