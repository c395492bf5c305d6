#!/usr/bin/python3
"""campaign.py - a seeded fault campaign over five hamr nodes in three zones (run.sh runs it).

Topology: five hamrd voters, each in its own network namespace of a NetLab
(tests/integration/cluster.py; 10.77.0.11-15, hub 10.77.0.1), in zones dc1
(nodes 1, 2), dc2 (3, 4) and dc3 (5), each node's [node] zone set to its
zone. HAProxy runs in the hub, as deploy/haproxy.cfg (PROXY v2 from the hub
address, GET /health/ready checks, leastconn), with one more frontend per
node that always sends to that node alone (no health check: a client stuck
to one node, which sees what that node answers while it is cut off,
stopped or has lost quorum). The recording sink (deploy/sink.py) in the hub
is every node's relayhost.

WAN: traffic between nodes of different zones (raft and peer ports) goes
through tests/tools/wan_delay, one process per node namespace, which holds
each direction's bytes for half the round-trip time of the zone pair (drawn
from --rtt-min..--rtt-max ms per pair by the seed). An nftables nat table
(hamrt_wan) in each node's namespace redirects the node's connections to a
node of another zone to the local wan_delay listener; wan_delay's own
connection to the real node carries a socket mark that the rule lets pass.
Every address stays the real one, so every node keeps the same [cluster]
voters, and the partition rules (NetLab.isolate, drop_oneway) still match
the real node addresses. Not modelled: bandwidth, loss, reordering, jitter;
connection set-up is not delayed.

Nemesis (random.Random(seed)): one fault at a time, each lasting a drawn
time, then healed, with a quiet gap between faults:
  kill      kill -9 of one node (the leader with probability LEADER_BIAS),
            restarted when the fault ends
  kill2     kill -9 of two nodes of different zones (the leader among them
            with probability LEADER_BIAS)
  stop      SIGSTOP of one node (leader-biased), SIGCONT at the end
  isolate   one node cut off from every other node (nft, both ways)
  zone      every node of one zone cut off from the other zones
  zonekill  every node of one zone killed with -9, restarted when the fault ends
  oneway    one node's packets to (or from) every other node dropped
  flap      one node cut off and healed again every FLAP_MIN..FLAP_MAX s
  transfer  hamrctl transfer to a random voter (from the leader)
  pair      two of kill, stop, isolate, oneway at once on two nodes of
            different zones (the second up to PAIR_STAGGER_MAX s later)
  upgrade   with --upgrade-from REV only, once: every node starts on the hamrd
            of REV (tests/campaign/previous.sh builds it) and, as the first
            fault past UPGRADE_AT of the run, is stopped (SIGTERM) and started
            on this build one at a time, followers first, each taking mail
            again before the next
Never more than two nodes (a minority) are down or cut off at once. Every
event is written with its start and end (wall clock and since the start)
to events.jsonl in the run's directory and logged on stderr. A node that
exits without being killed is a crash: recorded, restarted, and the run
fails.

Workload: LoadGen (cluster.py) clients with a unique X-Test-Id per message,
bodies of about 1, 4, 16 and 64 KiB, through HAProxy and through the
per-node frontends. Every load is bounded in messages and in time.

Checker, after every fault is healed, every node restarted and the queues
have drained (every digest equal): oracle_check (cluster.py) gives lost
(250, never delivered; a message a bounce names is reported as bounced
instead), unexpected, corrupted (sha256 after hamr's Received: differs) and
duplicates; each duplicate's first copy is inside a fault window
([start - DUP_WINDOW, end + DUP_WINDOW] of an event) or not. Also printed:
the 5xx replies the clients got, the longest time without a 250 and the
longest time without a delivery, each with the fault events it overlaps.
Exit status 1 on lost, unexpected, corrupted, a duplicate outside every
window, a crash, or a cluster that does not converge; 77 when namespaces
cannot be used.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import harness  # noqa: E402
from cluster import (DUP_WINDOW, Balancer, BalancerTarget, Cluster, LoadGen, NetLab,  # noqa: E402
                     NetLabUnavailable, _run, cluster_log, oracle_check)
from harness import WaitTimeout, CtlError  # noqa: E402

ZONES = (("dc1", (1, 2)), ("dc2", (3, 4)), ("dc3", (5,)))
N_NODES = 5
MAX_DOWN = 2  # a minority of five
WAN_TABLE = "hamrt_wan"
WAN_MARK = 0x68616D72  # wan_delay's default socket mark
WAN_PORT_OFFSET = 20000  # wan_delay listens on a node port + this
DEFAULT_RTT = (20, 40)  # ms, per zone pair
LEADER_BIAS = 0.6  # how often a one-node fault picks the leader
FAULT_MIN, FAULT_MAX = 3.0, 12.0  # seconds a fault lasts
QUIET_MIN, QUIET_MAX = 3.0, 8.0  # seconds between faults
FLAP_MIN, FLAP_MAX = 0.5, 2.0  # seconds per flap half-period
FAULT_WEIGHTS = (("kill", 4), ("kill2", 1), ("stop", 3), ("isolate", 3), ("zone", 2),
                 ("zonekill", 1), ("oneway", 2), ("flap", 2), ("transfer", 3), ("pair", 3))
UPGRADE_AT = 0.3  # with --upgrade-from: the rolling upgrade is the first fault past this share
UPGRADE_NODE_BOUND = 120.0  # one node of the rolling upgrade: stopped, started, taking mail
PAIR_KINDS = ("kill", "stop", "isolate", "oneway")  # what "pair" combines on two nodes
PAIR_STAGGER_MAX = 2.0  # seconds between the two faults of a pair
READY_BOUND = 120.0  # start, and after the last heal: a leader and a 250 through each node
LEADER_BOUND = 30.0  # after a fault: a leader agreed by the live nodes
TRANSFER_BOUND = 20.0
CONVERGE_BOUND = 300.0  # after the load stops: every queue empty, every digest equal
WAN_READY_BOUND = 15.0
# The loads: (name, body bytes, threads, pace seconds, through "lb" or "direct").
LOADS = (("lb1k", 1024, 3, 0.05, "lb"), ("lb16k", 16384, 2, 0.1, "lb"),
         ("lb64k", 65536, 1, 0.2, "lb"), ("dir4k", 4096, 3, 0.1, "direct"))
MAX_MESSAGES_PER_SECOND = 60  # bound on each load's count: seconds x this
CRASH_TAIL_LINES = 4  # of a crashed node's log, in the checker's output
DIRECT_PORT_BASE = 2700  # hub 127.0.0.1: HAProxy's frontend for node i is this + i
AROUND_AFTER = 10  # seconds after a fault's end that still count as around it (by_kind)


def zone_of(node_id):
    return next(z for z, ids in ZONES if node_id in ids)


class CampaignCluster(Cluster):
    """CampaignCluster - five voters in a NetLab, zones set, behind HAProxy (PROXY from the hub)."""

    def __init__(self, env, lab):
        self.proxy_source = lab.hub_addr
        overrides = {"smtpd": {"proxy_protocol": "on", "proxy_networks": "%s/32" % lab.hub_addr},
                     "node": {"log_level": "info"}}
        super().__init__(env, N_NODES, lab=lab, overrides=overrides)
        for node in self.nodes:
            node.overrides = {s: dict(kv) for s, kv in node.overrides.items()}
            node.overrides.setdefault("node", {})["zone"] = zone_of(node.id)
            # Clients reach HAProxy on the hub's 127.0.0.1: that is the PROXY header's source.
            node.overrides["smtpd"]["relay_networks"] = "%s.0/24, 127.0.0.0/8" % lab.subnet
            node.write_config()
        self.add_http()

    def probe_send_options(self, node):
        """probe_send_options - probes speak PROXY v1 from the hub, as HAProxy would."""
        return {"proxy_header": harness.proxy_v1_header(self.lab.hub_addr, server=node.host,
                                                        server_port=node.smtp_port)}


class CampaignBalancer(Balancer):
    """CampaignBalancer - Balancer plus one frontend per node pinned to that node (no check)."""

    def write_config(self):
        super().write_config()
        extra = []
        for n in self.cluster.nodes:
            extra.append("frontend direct_%s\n"
                         "    bind %s:%d\n"
                         "    default_backend only_%s\n"
                         "backend only_%s\n"
                         "    source %s\n"
                         "    server %s %s:%d send-proxy-v2\n"
                         % (n.name, self.host, DIRECT_PORT_BASE + n.id, n.name, n.name,
                            self.cluster.proxy_source, n.name, n.host, n.smtp_port))
        with open(self.cfg_path, "a") as f:
            f.write("\n".join(extra))

    def direct_target(self, node):
        t = BalancerTarget(self.host, DIRECT_PORT_BASE + node.id)
        t.id = node.id
        t.name = "direct-%s" % node.name
        return t


class Wan:
    """Wan - wan_delay in every node's namespace and the nft redirects to it.

    rtt: {(zone a, zone b): ms} for every pair of different zones.
    """

    def __init__(self, env, lab, cluster_, rtt, binary):
        self.env = env
        self.lab = lab
        self.cluster = cluster_
        self.rtt = rtt
        self.binary = binary
        self.procs = {}

    def one_way_ms(self, a, b):
        za, zb = zone_of(a), zone_of(b)
        return self.rtt[tuple(sorted((za, zb)))] // 2

    def start(self):
        for node in self.cluster.nodes:
            i = node.id
            maps, rules = [], []
            for peer in self.cluster.nodes:
                if zone_of(peer.id) == zone_of(i):
                    continue
                for port in (peer.raft_port, peer.peer_port):
                    if not port:
                        continue
                    local = port + WAN_PORT_OFFSET
                    maps.append("%d=%s:%d/%d" % (local, peer.host, port,
                                                 self.one_way_ms(i, peer.id)))
                    rules.append("  ip daddr %s tcp dport %d redirect to :%d\n"
                                 % (peer.host, port, local))
            proc = self.env.spawn("wan-%s" % node.name, self.lab.exec_prefix(i) + [
                self.binary, "--mark", str(WAN_MARK)] + maps)
            self.procs[i] = proc
            harness.wait_for(lambda p=proc: p.check_alive() or "wan_delay: ready" in p.log_text(),
                             WAN_READY_BOUND, "wan_delay in %s" % self.lab.node_ns(i),
                             interval=0.05)
            text = ("table ip %s {\n chain output {\n  type nat hook output priority -100;\n"
                    "  meta mark %d return\n%s }\n}\n" % (WAN_TABLE, WAN_MARK, "".join(rules)))
            out = subprocess.run(self.lab.exec_prefix(i) + ["nft", "-f", "-"],
                                 input=text.encode(), capture_output=True, timeout=20)
            if out.returncode != 0:
                raise RuntimeError("nft (wan) in %s: %s" % (self.lab.node_ns(i),
                                                            out.stderr.decode(errors="replace")))
        cluster_log("wan: rtt %s ms between zones" % ", ".join(
            "%s-%s %d" % (a, b, ms) for (a, b), ms in sorted(self.rtt.items())))

    def check_alive(self):
        for p in self.procs.values():
            p.check_alive()

    def proxied(self):
        """proxied - {node id: established connections from hamrd to its wan_delay} now."""
        out = {}
        for node in self.cluster.nodes:
            ss = _run(self.lab.exec_prefix(node.id) + ["ss", "-Htn", "state", "established"],
                      check=False).stdout.decode(errors="replace")
            ports = {":%d" % (p + WAN_PORT_OFFSET) for peer in self.cluster.nodes
                     for p in (peer.raft_port, peer.peer_port) if p}
            # Columns: Recv-Q Send-Q Local Peer. hamrd's socket names the real node as its
            # peer (the redirect is undone for it); wan_delay's accepted one has the wan
            # port as its local port.
            out[node.id] = sum(1 for ln in ss.splitlines() if len(ln.split()) >= 4
                               and any(ln.split()[2].endswith(p) for p in ports))
        return out

    def verify(self):
        """verify - raise unless inter-zone connections go through wan_delay."""
        counts = harness.wait_for(lambda: (lambda c: c if sum(c.values()) else None)(
            self.proxied()), WAN_READY_BOUND, "connections through wan_delay", interval=0.2)
        cluster_log("wan: connections through wan_delay per node: %s" % ", ".join(
            "node%d %d" % kv for kv in sorted(counts.items())))


class Event:
    """Event - one fault: kind, nodes, start and end (monotonic and wall), and notes."""

    def __init__(self, kind, nodes, t0_mono, detail=""):
        self.kind = kind
        self.nodes = list(nodes)
        self.detail = detail
        self.start = time.monotonic()
        self.wall_start = time.time()
        self.end = None
        self.wall_end = None
        self.t0 = t0_mono
        self.ok = True

    def finish(self, ok=True, detail=None):
        self.end = time.monotonic()
        self.wall_end = time.time()
        self.ok = ok
        if detail:
            self.detail = (self.detail + "; " if self.detail else "") + detail

    def as_dict(self):
        return {"kind": self.kind, "nodes": self.nodes, "detail": self.detail, "ok": self.ok,
                "start": round(self.start - self.t0, 3),
                "end": None if self.end is None else round(self.end - self.t0, 3),
                "wall_start": self.wall_start, "wall_end": self.wall_end}

    def label(self):
        return "%s(%s)@%.1f-%.1fs" % (self.kind, ",".join(map(str, self.nodes)),
                                      self.start - self.t0,
                                      (self.end if self.end is not None else self.start) - self.t0)


class Nemesis:
    """Nemesis - the seeded fault loop (one fault at a time, at most MAX_DOWN nodes hit)."""

    def __init__(self, cluster_, lab, rnd, t0, events_path, weights=FAULT_WEIGHTS,
                 upgrade_after=None):
        self.weights = weights
        self.upgrade_after = upgrade_after  # monotonic time of the rolling upgrade, or None
        self.c = cluster_
        self.lab = lab
        self.rnd = rnd
        self.t0 = t0
        self.events = []
        self.crashes = []
        self.killed = set()  # node ids we killed and have not restarted
        self.stopped = set()  # node ids we SIGSTOPped and have not continued
        self.events_path = events_path
        self._stop = threading.Event()
        self._thread = None
        self.error = None

    # --- helpers ------------------------------------------------------------

    def log_event(self, ev):
        cluster_log("nemesis: %s %s" % (ev.label(), ev.detail))
        with open(self.events_path, "a") as f:
            f.write(json.dumps(ev.as_dict()) + "\n")

    def leader_id(self):
        leader = self.c.agreed_leader() or self.c.leader_hint()
        return leader.id if leader else None

    def pick(self, k=1):
        """pick - k node ids in different zones; the leader first with probability LEADER_BIAS.

        Draws the same amount from the seed whoever leads, so that the kinds and
        lengths of the faults replay with the seed.
        """
        ids = [n.id for n in self.c.nodes]
        bias = self.rnd.random()
        order = self.rnd.sample(ids, len(ids))
        leader = self.leader_id()
        chosen = [leader] if leader and bias < LEADER_BIAS else []
        for cand in order:
            if len(chosen) < k and zone_of(cand) not in {zone_of(x) for x in chosen}:
                chosen.append(cand)
        return chosen

    def hold(self, seconds):
        """hold - wait while the fault lasts (returns early when the campaign stops)."""
        self._stop.wait(seconds)

    def check_crashes(self):
        """check_crashes - a node that exited without our kill is a crash: record, restart."""
        for node in self.c.nodes:
            if node.id in self.killed or node.proc is None or node.proc.alive():
                continue
            rc = node.proc.popen.returncode
            tail = node.proc.log_tail(30)
            self.crashes.append({"node": node.id, "rc": rc, "time": time.time(),
                                 "log": node.proc.log_path, "tail": tail})
            cluster_log("nemesis: CRASH %s exited with %s (log %s)" % (node.name, rc,
                                                                       node.proc.log_path))
            ev = Event("crash", [node.id], self.t0, "exit status %s" % rc)
            ev.finish(ok=False)
            self.events.append(ev)
            self.log_event(ev)
            self.c.restart(node)

    # --- faults ---------------------------------------------------------------

    def apply(self, kind, i, group=()):
        """apply - start the one-node fault kind on node i; returns (undo, detail).

        group: the nodes cut off together with i (a zone), which i still reaches.
        """
        node = self.c.node(i)
        if kind == "kill":
            self.killed.add(i)
            self.c.kill9(node)

            def undo():
                self.c.restart(node)
                self.killed.discard(i)
            return undo, "kill -9"
        if kind == "stop":
            self.stopped.add(i)
            os.kill(node.proc.popen.pid, signal.SIGSTOP)

            def undo():
                if i in self.stopped and node.proc is not None and node.proc.alive():
                    os.kill(node.proc.popen.pid, signal.SIGCONT)
                self.stopped.discard(i)
            return undo, "SIGSTOP"
        others = [n.id for n in self.c.nodes if n.id != i and n.id not in group]
        if kind == "isolate":
            self.lab.isolate(i, others)
            return (lambda: self.lab.heal(i)), "cut off"
        if kind == "oneway":
            direction = self.rnd.choice(("output", "input"))
            self.lab.drop_oneway(i, others, direction)
            return (lambda: self.lab.heal(i)), "drops its %s" % direction
        raise ValueError("unknown fault %s" % kind)

    def apply_hold_undo(self, kinds, ids, duration, group=(), stagger=0.0):
        """apply_hold_undo - kinds[k] on ids[k] (stagger seconds apart), hold, undo in
        reverse order; returns the details."""
        undos, details = [], []
        for k, (kind, i) in enumerate(zip(kinds, ids)):
            if k and stagger:
                self.hold(stagger)
            undo, detail = self.apply(kind, i, group)
            undos.append(undo)
            details.append("%d %s" % (i, detail))
        self.hold(duration)
        for undo in reversed(undos):
            undo()
        return ", ".join(details)

    def cont_all(self):
        for i in sorted(self.stopped):
            node = self.c.node(i)
            if node.proc is not None and node.proc.alive():
                os.kill(node.proc.popen.pid, signal.SIGCONT)
        self.stopped.clear()

    def do_flap(self, i, duration):
        # Its own generator: the number of flips depends on timing, the seed's draws must not.
        rnd = random.Random(self.rnd.random())
        end = time.monotonic() + duration
        others = [n.id for n in self.c.nodes if n.id != i]
        flips = 0
        while time.monotonic() < end and not self._stop.is_set():
            if flips % 2 == 0:
                self.lab.isolate(i, others)
            else:
                self.lab.heal(i)
            flips += 1
            self.hold(rnd.uniform(FLAP_MIN, FLAP_MAX))
        self.lab.heal(i)
        return flips

    def rolling_upgrade(self):
        """rolling_upgrade - every node stopped and started on this build, the leader last."""
        leader = self.leader_id()
        order = sorted((n for n in self.c.nodes if n.binary is not None),
                       key=lambda n: (n.id == leader, n.id))
        ev = Event("upgrade", [n.id for n in order], self.t0, "leader was %s" % leader)
        done = []
        try:
            for node in order:
                self.c.stop(node)
                node.binary = None
                self.c.restart(node)
                self.c.wait_ready(UPGRADE_NODE_BOUND, nodes=[node])
                done.append(node.id)
            ev.finish(True, "nodes %s on this build" % done)
        except (WaitTimeout, AssertionError, harness.ProcessDied) as e:
            ev.finish(False, "after %s: %s" % (done, str(e).splitlines()[0][:200]))
        return ev

    def one_fault(self):
        kinds = [k for k, _ in self.weights]
        kind = self.rnd.choices(kinds, weights=[w for _, w in self.weights])[0]
        duration = self.rnd.uniform(FAULT_MIN, FAULT_MAX)
        if self.upgrade_after is not None and time.monotonic() >= self.upgrade_after:
            self.upgrade_after = None
            kind = "upgrade"
        if kind == "upgrade":
            ev = self.rolling_upgrade()
        elif kind == "transfer":
            target = self.rnd.choice(self.c.nodes)
            ev = Event(kind, [target.id], self.t0, "from %s" % self.leader_id())
            try:
                new = self.c.transfer(target, timeout=TRANSFER_BOUND)
                ev.finish(True, "leader now %s" % new.id)
            except (WaitTimeout, CtlError) as e:
                ev.finish(False, "did not move: %s" % str(e).splitlines()[0][:200])
        elif kind in ("kill", "kill2", "stop", "isolate", "oneway"):
            ids = self.pick(2 if kind == "kill2" else 1)
            one = "kill" if kind == "kill2" else kind
            ev = Event(kind, ids, self.t0, "leader was %s" % self.leader_id())
            ev.finish(True, self.apply_hold_undo([one] * len(ids), ids, duration))
        elif kind == "zone":
            zone, ids = self.rnd.choice(ZONES)
            ev = Event(kind, list(ids), self.t0, "zone %s, leader was %s"
                       % (zone, self.leader_id()))
            self.apply_hold_undo(["isolate"] * len(ids), list(ids), duration, group=ids)
            ev.finish()
        elif kind == "zonekill":
            zone, ids = self.rnd.choice(ZONES)
            ev = Event(kind, list(ids), self.t0, "zone %s, leader was %s"
                       % (zone, self.leader_id()))
            ev.finish(True, self.apply_hold_undo(["kill"] * len(ids), list(ids), duration))
        elif kind == "pair":
            ids = self.pick(2)
            kinds = [self.rnd.choice(PAIR_KINDS) for _ in ids]
            stagger = self.rnd.uniform(0.0, PAIR_STAGGER_MAX)
            ev = Event(kind, ids, self.t0, "leader was %s" % self.leader_id())
            ev.finish(True, self.apply_hold_undo(kinds, ids, duration, stagger=stagger))
        else:  # flap
            i = self.pick(1)[0]
            ev = Event(kind, [i], self.t0, "leader was %s" % self.leader_id())
            flips = self.do_flap(i, duration)
            ev.finish(True, "%d flips" % flips)
        # An upgrade names every node, but stops one at a time.
        assert ev.kind == "upgrade" or len(ev.nodes) <= MAX_DOWN
        self.events.append(ev)
        self.log_event(ev)

    def run(self, seconds):
        end = time.monotonic() + seconds
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                self.hold(self.rnd.uniform(QUIET_MIN, QUIET_MAX))
                self.check_crashes()
                if self._stop.is_set() or time.monotonic() >= end:
                    break
                try:
                    self.c.wait_leader(LEADER_BOUND)
                    self.one_fault()
                except WaitTimeout as e:
                    cluster_log("nemesis: no agreed leader before the next fault: %s"
                                % str(e).splitlines()[0])
                except harness.ProcessDied:
                    self.heal_all()
                    self.check_crashes()
        except Exception as e:  # recorded; the main thread heals and fails the run
            self.error = "%s: %s" % (type(e).__name__, e)
            cluster_log("nemesis: error %s" % self.error)
        finally:
            self.heal_all()

    def heal_all(self):
        """heal_all - SIGCONT, heal every rule, restart every node we killed."""
        self.cont_all()
        self.lab.heal()
        for i in sorted(self.killed):
            self.c.restart(self.c.node(i))
        self.killed.clear()

    def start(self, seconds):
        self._thread = threading.Thread(target=self.run, args=(seconds,), name="nemesis",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=60):
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("nemesis thread did not stop within %ss" % timeout)


def near(events, t0, t1, wall=False):
    """near - labels of the events overlapping [t0, t1], else of the nearest one."""
    def span(e):
        return (e.wall_start, e.wall_end or e.wall_start) if wall else (e.start, e.end or e.start)

    hits = [e.label() for e in events if span(e)[0] <= t1 and span(e)[1] >= t0]
    if hits or not events:
        return hits
    best = min(events, key=lambda e: min(abs(span(e)[0] - t0), abs(span(e)[1] - t1)))
    return ["nearest " + best.label()]


def longest_gap(times, t0, t1):
    """longest_gap - (length, start, end) of the longest interval in [t0, t1] without a time."""
    pts = [t0] + sorted(t for t in times if t0 <= t <= t1) + [t1]
    best = max(zip(pts, pts[1:]), key=lambda ab: ab[1] - ab[0])
    return best[1] - best[0], best[0], best[1]


def bounced_ids(records, ids):
    """bounced_ids - which of ids a bounce (empty MAIL FROM) delivered to the sink names."""
    out = set()
    if not ids:
        return out
    for rec in records:
        if rec.get("mail_from"):
            continue
        try:
            text = harness.Sink.read_file(rec).decode("utf-8", "replace")
        except OSError:
            continue
        out.update(t for t in ids if t in text)
    return out


def by_kind(events, accepted, delivered, wall_offset):
    """by_kind - {kind: events, and the longest acceptance and delivery gaps around them}.

    Around an event: from its start to AROUND_AFTER seconds after its end (the time a
    fault's effects take to pass: an election, a lease running out), in seconds without
    a 250 (accepted: monotonic times) and without a delivery (delivered: wall times).
    """
    out = {}
    for e in events:
        end = (e.end if e.end is not None else e.start) + AROUND_AFTER
        acc = longest_gap(accepted, e.start, end)[0]
        dlv = longest_gap(delivered, e.start + wall_offset, end + wall_offset)[0]
        k = out.setdefault(e.kind, {"events": 0, "accept_gap_max": 0.0, "deliver_gap_max": 0.0})
        k["events"] += 1
        k["accept_gap_max"] = round(max(k["accept_gap_max"], acc), 1)
        k["deliver_gap_max"] = round(max(k["deliver_gap_max"], dlv), 1)
    return out


def write_timeline(path, attempts, records, t_begin, wall_offset):
    """write_timeline - timeline.json for plot.py: seconds since t_begin of every 250, every
    other answer or failed transaction, and every delivery the sink recorded."""
    with open(path, "w") as f:
        json.dump({"accepted": [round(a.t_end - t_begin, 3) for a in attempts if a.ok],
                   "refused": [round(a.t_end - t_begin, 3) for a in attempts
                               if not a.ok and a.t_end],
                   "delivered": [round(float(r.get("time", 0)) - wall_offset - t_begin, 3)
                                 for r in records]}, f)


def plot(run_dir):
    """plot - campaign.png in run_dir with plot.py when Debian's matplotlib is there."""
    out = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "plot.py"), run_dir],
                         capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    text = (out.stdout + out.stderr).decode(errors="replace").strip()
    cluster_log("campaign: plot: %s" % (text.splitlines()[-1] if text else out.returncode))


def check(cluster_, loads, events, crashes, t_begin, t_end, wall_offset, out):
    """check - the checker's report (printed to out); returns the list of failures."""
    attempts = [a for load in loads for a in load.attempts]
    records = cluster_.sink.records()
    res = oracle_check(attempts, records, [load.prefix for load in loads])
    bounced = bounced_ids(records, res.lost)
    lost = [t for t in res.lost if t not in bounced]
    windows = [(e.wall_start - DUP_WINDOW, (e.wall_end or e.wall_start) + DUP_WINDOW)
               for e in events]
    dup_in, dup_out, dup_where = [], [], {}
    for tid, first in sorted(res.first_copy.items()):
        hits = [e.label() for e, (a, b) in zip(events, windows) if a <= first <= b]
        (dup_in if hits else dup_out).append(tid)
        dup_where[tid] = hits
    fivexx = {}
    for a in attempts:
        if a.permfail:
            key = "%s %s" % (a.code, a.text[:60])
            fivexx[key] = fivexx.get(key, 0) + 1
    accepted = [a.t_end for a in attempts if a.ok]
    acc = longest_gap(accepted, t_begin, t_end)
    deliveries = [float(r.get("time", 0)) for r in records]
    dlv = longest_gap(deliveries, t_begin + wall_offset, t_end + wall_offset)
    kind_gaps = by_kind(events, accepted, deliveries, wall_offset)
    kinds = {}
    for e in events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1

    def line(text):
        out.write(text + "\n")

    line("faults: %d events: %s" % (len(events), ", ".join(
        "%s %d" % kv for kv in sorted(kinds.items()))))
    line("oracle: %s" % res.summary())
    line("lost (250, never delivered nor bounced): %d %s" % (
        len(lost), [res.details.get(t) for t in lost[:10]]))
    if bounced:
        line("bounced instead of delivered: %d" % len(bounced))
    line("unexpected: %d %s" % (len(res.unexpected),
                                 [res.details.get(t) for t in res.unexpected[:10]]))
    line("corrupted: %d %s" % (len(res.corrupted), res.corrupted[:10]))
    line("duplicates: %d copies of %d messages, %d in a fault window, %d outside %s" % (
        res.dup, len(res.duplicates), len(dup_in), len(dup_out),
        {t: res.first_copy[t] for t in dup_out[:10]}))
    for tid in dup_in[:10]:
        line("  duplicate %s: %d extra, first copy in %s" % (tid, res.duplicates[tid],
                                                          dup_where[tid]))
    line("5xx seen by clients: %d %s" % (res.permfail, fivexx))
    for load in loads:
        r = oracle_check(load.attempts, [], [load.prefix])
        line("  load %s: sent=%d ok=%d tempfail=%d indoubt=%d connerr=%d 5xx=%d" % (
            load.prefix, r.sent, r.ok, r.tempfail, r.indoubt, r.connerr, r.permfail))
    line("longest acceptance gap: %.1fs (%.1f-%.1fs) near %s" % (
        acc[0], acc[1] - t_begin, acc[2] - t_begin, near(events, acc[1], acc[2])))
    line("longest delivery gap: %.1fs (%.1f-%.1fs) near %s" % (
        dlv[0], dlv[1] - wall_offset - t_begin, dlv[2] - wall_offset - t_begin,
        near(events, dlv[1], dlv[2], wall=True)))
    line("by fault kind (longest gap from the start of a fault to %ds after its end):"
         % AROUND_AFTER)
    for kind, k in sorted(kind_gaps.items()):
        line("  %-8s %3d events, without a 250 %5.1fs, without a delivery %5.1fs" % (
            kind, k["events"], k["accept_gap_max"], k["deliver_gap_max"]))
    line("crashes: %d %s" % (len(crashes), [(c["node"], c["rc"], c["log"]) for c in crashes]))
    for crash in crashes:
        for ln in crash["tail"].splitlines()[-CRASH_TAIL_LINES:]:
            line("  node%d: %s" % (crash["node"], ln[:300]))
    failures = []
    if lost:
        failures.append("%d lost" % len(lost))
    if res.unexpected:
        failures.append("%d unexpected" % len(res.unexpected))
    if res.corrupted:
        failures.append("%d corrupted" % len(res.corrupted))
    if dup_out:
        failures.append("%d duplicates outside every fault window" % len(dup_out))
    if crashes:
        failures.append("%d crashes" % len(crashes))
    if res.ok == 0:
        failures.append("no 250 at all")
    summary = {"events": kinds, "sent": res.sent, "ok": res.ok, "delivered": res.delivered,
               "lost": lost, "bounced": sorted(bounced), "unexpected": res.unexpected,
               "corrupted": res.corrupted, "duplicates": res.duplicates,
               "duplicates_outside": dup_out, "fivexx": fivexx, "tempfail": res.tempfail,
               "indoubt": res.indoubt, "connerr": res.connerr,
               "acceptance_gap": acc[0], "delivery_gap": dlv[0], "crashes": len(crashes),
               "by_kind": kind_gaps,
               "failures": failures}
    return failures, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--rtt-min", type=int, default=DEFAULT_RTT[0], help="ms")
    ap.add_argument("--rtt-max", type=int, default=DEFAULT_RTT[1], help="ms")
    ap.add_argument("--wan-delay", default=os.environ.get("WAN_DELAY", ""),
                    help="the wan_delay binary")
    ap.add_argument("--faults", default="",
                    help="KIND=WEIGHT,... instead of the default mix (%s)"
                    % ",".join("%s=%d" % kw for kw in FAULT_WEIGHTS))
    ap.add_argument("--keep", action="store_true", help="keep the run's directory on success")
    ap.add_argument("--upgrade-from", default="",
                    help="a hamrd build directory of an earlier release: every node starts on it "
                    "and is upgraded to this build during the run (see previous.sh)")
    args = ap.parse_args()
    weights = FAULT_WEIGHTS
    if args.faults:
        known = {k for k, _ in FAULT_WEIGHTS}
        try:
            weights = tuple((k, int(w)) for k, w in (kw.split("=") for kw in
                                                     args.faults.split(",")))
        except ValueError:
            ap.error("--faults: KIND=WEIGHT,...")
        if not {k for k, _ in weights} <= known or not any(w > 0 for _, w in weights):
            ap.error("--faults: kinds are %s, one weight above 0" % ", ".join(sorted(known)))
    print("campaign: seed %d, %.1f minutes, faults %s" % (
        args.seed, args.minutes, ",".join("%s=%d" % kw for kw in weights)), flush=True)
    if not args.wan_delay or not os.access(args.wan_delay, os.X_OK):
        sys.stderr.write("campaign: wan_delay not found (%r): build the wan_delay target\n"
                         % args.wan_delay)
        return 2
    try:
        NetLab.check_available()
    except NetLabUnavailable as e:
        print("campaign: SKIP: network namespaces unavailable: %s" % e)
        return 77
    if not Balancer.available():
        print("campaign: SKIP: haproxy is not installed (apt-get install haproxy)")
        return 77
    rnd = random.Random(args.seed)
    zones = [z for z, _ in ZONES]
    rtt = {tuple(sorted((a, b))): rnd.randint(args.rtt_min, args.rtt_max)
           for k, a in enumerate(zones) for b in zones[k + 1:]}
    seconds = args.minutes * 60.0

    lab = NetLab(N_NODES)
    env = None
    failures = []
    nemesis = None
    c = None
    try:
        lab.setup()
        env = harness.Env("campaign-%d" % args.seed)
        cluster_log("campaign: directory %s" % env.dir)
        c = CampaignCluster(env, lab)
        if args.upgrade_from:
            for node in c.nodes:
                node.binary = os.path.join(args.upgrade_from, "hamrd")
        wan = Wan(env, lab, c, rtt, args.wan_delay)
        wan.start()
        c.start(READY_BOUND)
        wan.verify()
        zones_line = [ln for ln in subprocess.run(
            [harness.hamrctl_path(), "-s", harness.hostport(c.nodes[0].host,
                                                            c.nodes[0].control_port), "status"],
            capture_output=True, timeout=15, env=c.nodes[0].ctl_env(),
            stdin=subprocess.DEVNULL).stdout.decode(errors="replace").splitlines()
            if ln.startswith("zones:")]
        cluster_log("campaign: hamrctl status: %s" % (zones_line or "no zones line"))
        lb = CampaignBalancer(env, c).start()
        for node in c.nodes:
            lb.wait_state(node, "UP", 30)
        t0 = time.monotonic()
        wall_offset = time.time() - t0
        loads = []
        for name, size, threads, pace, via in LOADS:
            if via == "lb":
                targets = (lambda t=lb.target(): [t])
            else:
                direct = [lb.direct_target(n) for n in c.nodes]
                targets = (lambda d=direct: d)
            loads.append(LoadGen(c, name, threads=threads, pace=pace, body_bytes=size,
                                 max_messages=int(seconds * MAX_MESSAGES_PER_SECOND),
                                 max_seconds=seconds + 30, targets=targets).start())
        nemesis = Nemesis(c, lab, rnd, t0, os.path.join(env.dir, "events.jsonl"),
                          weights, upgrade_after=(t0 + UPGRADE_AT * seconds
                                                  if args.upgrade_from else None))
        nemesis.start(seconds)
        # The main thread watches for the end, for crashes of the helpers, bounded.
        deadline = t0 + seconds + 60
        while nemesis._thread.is_alive() and time.monotonic() < deadline:
            nemesis._thread.join(1.0)
            wan.check_alive()
            lb.proc.check_alive()
        nemesis.stop()
        if nemesis.error:
            failures.append("nemesis: %s" % nemesis.error)
        cluster_log("campaign: faults over, healing; waiting for every node to take mail")
        try:
            c.wait_ready(READY_BOUND)
        except WaitTimeout as e:
            failures.append("not ready after the heal: %s" % str(e).splitlines()[0])
        for load in loads:
            load.stop()
        t_end = time.monotonic()
        nemesis.check_crashes()
        try:
            c.wait_converged(CONVERGE_BOUND)
        except WaitTimeout as e:
            failures.append("no convergence: %s" % e)
        fails, summary = check(c, loads, nemesis.events, nemesis.crashes, t0, t_end,
                               wall_offset, sys.stdout)
        failures += fails
        summary.update({"seed": args.seed, "minutes": args.minutes,
                        "rtt_ms": {"%s-%s" % k: v for k, v in rtt.items()},
                        "failures": failures, "dir": env.dir})
        with open(os.path.join(env.dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        write_timeline(os.path.join(env.dir, "timeline.json"),
                       [a for load in loads for a in load.attempts], c.sink.records(), t0,
                       wall_offset)
        plot(env.dir)
    except (WaitTimeout, harness.ProcessDied, RuntimeError, AssertionError) as e:
        failures.append("%s: %s" % (type(e).__name__, e))
    finally:
        if nemesis is not None and nemesis._thread is not None and nemesis._thread.is_alive():
            nemesis.stop()
        if failures and c is not None:
            # Stopped early: let nodes that were just restarted finish starting, so that
            # the SIGTERM of env.close finds them able to stop cleanly (bounded).
            try:
                c.wait_leader(LEADER_BOUND)
            except (WaitTimeout, harness.ProcessDied) as e:
                cluster_log("campaign: no leader before the stop: %s" % str(e).splitlines()[0])
        if env is not None:
            problems = env.close()
            failures += ["at exit: %s" % p for p in problems]
            if failures:
                env.dump_logs(lines=40)
        lab.heal()
        lab.teardown()
    print("campaign: seed %d: %s" % (args.seed, "FAIL: " + "; ".join(failures) if failures
                                     else "PASS"), flush=True)
    if env is not None:
        if failures or args.keep:
            print("campaign: logs kept in %s" % env.dir)
        else:
            env.remove()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
