"""dnslab.py - real DNS for the routing tests: NSD serving the test's zones.

AuthDNS runs NSD (Debian's nsd) in the foreground on 127.0.0.1 and a free
port, serving the zones the test writes as zone-file text. A zone named but
given None is configured without a file, and NSD answers SERVFAIL for it
(a zone that failed to load). set_zone rewrites a zone and restarts NSD on
the same port.

DnsGate sits between hamrd and NSD: a UDP relay on its own port that either
forwards each query and its answer ("forward") or swallows it ("drop", a
resolver that does not answer: hamr's queries time out). The test flips it.

ValidatingDNS is DNSSEC for the DANE tests: the zones named signed are signed
with ldns-signzone (an ECDSA P-256 KSK and ZSK per zone, NSEC3) and served by
an AuthDNS together with the unsigned ones; unbound on its own port is the
validating resolver hamrd asks, with each signed zone's DS as its trust
anchor and a stub zone per zone pointing at NSD. An unsigned zone delegated
from a signed parent without a DS record is provably insecure: unbound
answers for it without the AD bit (no SERVFAIL).
"""

import os
import random
import socket
import struct
import subprocess
import threading

import harness
from harness import wait_for

NSD = "/usr/sbin/nsd"
UNBOUND = "/usr/sbin/unbound"
LDNS_KEYGEN = "/usr/bin/ldns-keygen"
LDNS_SIGNZONE = "/usr/bin/ldns-signzone"


def _dns_ask(port, name, qtype, flags, host, timeout):
    """_dns_ask - one UDP query with header flags; the answer's octets 2 and 3, or None."""
    qid = random.randrange(1 << 16)
    q = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 0)
    for label in name.strip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, (host, port))
        try:
            data, _ = s.recvfrom(4096)
        except OSError:
            return None
    if len(data) < 12 or struct.unpack(">H", data[:2])[0] != qid:
        return None
    return data[2], data[3]


def dns_query(port, name, qtype=6, host="127.0.0.1", timeout=0.5):
    """dns_query - one UDP query; the answer's RCODE, or None when none came."""
    flags = _dns_ask(port, name, qtype, 0x0100, host, timeout)
    return None if flags is None else flags[1] & 0x0F


def _wait_serving(proc, ready, timeout, what):
    """_wait_serving - until ready() holds, proc staying alive meanwhile."""
    def check():
        proc.check_alive()
        return ready()

    wait_for(check, timeout, what, interval=0.1)


class AuthDNS:
    """AuthDNS - NSD on 127.0.0.1:port serving zones {origin: text or None}."""

    def __init__(self, env, zones, name="nsd"):
        if not os.path.exists(NSD):
            raise harness.unittest.SkipTest("nsd not installed (%s)" % NSD)
        self.env = env
        self.name = name
        self.dir = os.path.join(env.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = harness.free_port("127.0.0.1")
        self.zones = dict(zones)
        self.proc = None

    def _write(self):
        conf = [
            "server:",
            "  ip-address: 127.0.0.1@%d" % self.port,
            "  port: %d" % self.port,
            '  username: ""',
            '  chroot: ""',
            '  zonesdir: "%s"' % self.dir,
            '  pidfile: "%s/nsd.pid"' % self.dir,
            '  xfrdfile: "%s/xfrd.state"' % self.dir,
            '  zonelistfile: "%s/zone.list"' % self.dir,
            '  database: ""',
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for origin, text in self.zones.items():
            path = os.path.join(self.dir, origin.strip(".") + ".zone")
            if text is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                with open(path, "w") as f:
                    f.write(text)
            conf += ["zone:", "  name: %s." % origin.strip("."),
                     "  zonefile: %s" % os.path.basename(path)]
        with open(os.path.join(self.dir, "nsd.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")

    def start(self, timeout=20):
        self._write()
        self.proc = self.env.spawn(self.name, [NSD, "-d", "-c",
                                               os.path.join(self.dir, "nsd.conf")])
        origin = next(o for o, t in self.zones.items() if t is not None)
        _wait_serving(self.proc, lambda: dns_query(self.port, origin) == 0, timeout,
                      "%s to answer on port %d" % (self.name, self.port))
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def set_zone(self, origin, text):
        """set_zone - serve text for origin (None: unloaded, SERVFAIL) from a restarted NSD."""
        self.stop()
        self.zones[origin] = text
        # The port is free again once NSD is gone; nothing else takes it meanwhile.
        return self.start()


class DnsGate:
    """DnsGate - a UDP relay to upstream that forwards or drops, as the test says."""

    def __init__(self, upstream_port, host="127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.mode = "forward"
        self.forwarded = 0
        self.dropped = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data, client = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if self.mode == "drop":
                self.dropped += 1
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.settimeout(2)
                try:
                    up.sendto(data, self.upstream)
                    answer, _ = up.recvfrom(4096)
                except OSError:
                    continue
            self.forwarded += 1
            try:
                self.sock.sendto(answer, client)
            except OSError:
                pass

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


def wait_dropped(gate, n, timeout=30):
    """wait_dropped - until the gate has swallowed at least n queries."""
    start = gate.dropped
    wait_for(lambda: gate.dropped >= start + n, timeout, "%d queries dropped" % n)


def dns_answer_ad(port, name, qtype, host="127.0.0.1", timeout=0.5):
    """dns_answer_ad - one query with RD and AD set: (RCODE, AD bit of the answer), or None."""
    flags = _dns_ask(port, name, qtype, 0x0120, host, timeout)
    return None if flags is None else (flags[1] & 0x0F, bool(flags[1] & 0x20))


class ValidatingDNS:
    """ValidatingDNS - signed and unsigned zones on NSD behind a validating unbound."""

    def __init__(self, env, signed, unsigned=None, name="dnssec"):
        for path in (NSD, UNBOUND, LDNS_KEYGEN, LDNS_SIGNZONE):
            if not os.path.exists(path):
                raise harness.unittest.SkipTest("%s not installed" % path)
        self.env = env
        self.name = name
        self.dir = os.path.join(env.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.signed = dict(signed)
        self.unsigned = dict(unsigned or {})
        self.auth = None
        self.proc = None
        self.port = harness.free_port("127.0.0.1")
        self.anchors = os.path.join(self.dir, "anchors.ds")

    def _run(self, argv):
        out = subprocess.run(argv, cwd=self.dir, capture_output=True, check=True,
                             stdin=subprocess.DEVNULL, timeout=60)
        return out.stdout.decode().strip()

    def _sign(self, origin, text):
        """_sign - origin's zone text signed (NSEC3); its KSK's DS appended to the anchors."""
        origin = origin.strip(".") + "."
        path = os.path.join(self.dir, origin + "unsigned")
        with open(path, "w") as f:
            f.write(text)
        ksk = self._run([LDNS_KEYGEN, "-a", "ECDSAP256SHA256", "-k", origin])
        zsk = self._run([LDNS_KEYGEN, "-a", "ECDSAP256SHA256", origin])
        self._run([LDNS_SIGNZONE, "-n", "-o", origin, path, ksk, zsk])
        with open(os.path.join(self.dir, ksk + ".ds")) as f:
            ds = f.read()
        with open(self.anchors, "a") as f:
            f.write(ds)
        with open(path + ".signed") as f:
            return f.read()

    def start(self, timeout=20):
        if os.path.exists(self.anchors):
            os.unlink(self.anchors)
        zones = {o: self._sign(o, t) for o, t in self.signed.items()}
        zones.update(self.unsigned)
        self.auth = AuthDNS(self.env, zones, name=self.name + "-nsd").start(timeout)
        conf = [
            "server:",
            "  interface: 127.0.0.1@%d" % self.port,
            "  port: %d" % self.port,
            '  username: ""',
            '  chroot: ""',
            '  directory: "%s"' % self.dir,
            '  pidfile: "%s/unbound.pid"' % self.dir,
            "  use-syslog: no",
            "  do-daemonize: no",
            "  do-not-query-localhost: no",
            '  module-config: "validator iterator"',
            '  trust-anchor-file: "%s"' % self.anchors,
            "  num-threads: 1",
            "  so-reuseport: no",
            "  access-control: 127.0.0.0/8 allow",
            "  verbosity: 1",
        ]
        # unbound refuses the special-use names (RFC 6761) unless told otherwise.
        tops = {o.strip(".").split(".")[-1] for o in list(self.signed) + list(self.unsigned)}
        conf += ['  local-zone: "%s." nodefault' % t for t in sorted(tops)]
        for origin in list(self.signed) + list(self.unsigned):
            conf += ["stub-zone:", '  name: "%s."' % origin.strip("."),
                     "  stub-addr: 127.0.0.1@%d" % self.auth.port]
        conf += ["remote-control:", "  control-enable: no"]
        path = os.path.join(self.dir, "unbound.conf")
        with open(path, "w") as f:
            f.write("\n".join(conf) + "\n")
        self.proc = self.env.spawn(self.name + "-unbound", [UNBOUND, "-d", "-c", path])
        origin = next(iter(self.signed))
        _wait_serving(self.proc, lambda: dns_answer_ad(self.port, origin, 6) == (0, True),
                      timeout, "unbound on %d to validate %s" % (self.port, origin))
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None
        if self.auth:
            self.auth.stop()
