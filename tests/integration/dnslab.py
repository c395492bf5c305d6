"""dnslab.py - real DNS for the routing tests: NSD serving the test's zones.

AuthDNS runs NSD (Debian's nsd) in the foreground on 127.0.0.1 and a free
port, serving the zones the test writes as zone-file text. A zone named but
given None is configured without a file, and NSD answers SERVFAIL for it
(a zone that failed to load). set_zone rewrites a zone and restarts NSD on
the same port.

DnsGate sits between hamrd and NSD: a UDP relay on its own port that either
forwards each query and its answer ("forward") or swallows it ("drop", a
resolver that does not answer: hamr's queries time out). The test flips it.
"""

import os
import random
import socket
import struct
import threading

import harness
from harness import wait_for

NSD = "/usr/sbin/nsd"


def dns_query(port, name, qtype=6, host="127.0.0.1", timeout=0.5):
    """dns_query - one UDP query; the answer's RCODE, or None when none came."""
    qid = random.randrange(1 << 16)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
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
    return data[3] & 0x0F


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

        def answering():
            self.proc.check_alive()
            return dns_query(self.port, origin) == 0

        wait_for(answering, timeout, "%s to answer on port %d" % (self.name, self.port),
                 interval=0.1)
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
