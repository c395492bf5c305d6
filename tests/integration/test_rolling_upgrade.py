#!/usr/bin/python3
"""test_rolling_upgrade.py - deploy/rolling-upgrade.sh on 3 nodes behind HAProxy, under load.

The nodes run from an "installed" copy of hamrd in the test directory
(HAMRD points at it); the "new" binary is a second copy of the same build
with a few bytes appended, so that it differs from the installed one.
HAMR_STOP_CMD / HAMR_START_CMD run a small helper script (written here)
that asks this test process, over a UNIX socket, to SIGTERM or start the
node by name, so the harness keeps owning every hamrd. Load runs through
HAProxy (cluster.Balancer) the whole time.

Checks: the script exits 0; the installed binary is the new one and the old
one is kept as .prev; zero 5xx; the oracle is clean (nothing lost,
unexpected or corrupted; duplicates only around the leadership handovers);
the longest gap between deliveries at the sink while the load ran is at
most GAP_BOUND seconds; every node ends undrained, ready (/health/ready
200), a member of one agreed leader's cluster, and UP in HAProxy.

Skips when /usr/sbin/haproxy is missing (apt-get install haproxy).
"""

import filecmp
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from cluster import LEASE_TIME, cluster_log  # noqa: E402
from harness import field  # noqa: E402

GAP_BOUND = 10.0
SCRIPT = os.path.join(harness.REPO, "deploy", "rolling-upgrade.sh")

NODECTL = '''#!/usr/bin/python3
"""nodectl.py SOCK stop|start NAME - ask the test process to stop or start a node."""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(90)
s.connect(sys.argv[1])
s.sendall(("%s %s\\n" % (sys.argv[2], sys.argv[3])).encode())
reply = s.makefile().readline().strip()
print(reply)
sys.exit(0 if reply == "ok" else 1)
'''


class NodeControl:
    """NodeControl - a UNIX socket server: "stop NAME" / "start NAME" on the test's cluster."""

    def __init__(self, cl, path):
        self.cluster = cl
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.done = threading.Event()
        self.log = []  # (time.time(), verb, name, reply)
        self.thread = threading.Thread(target=self._run, name="nodectl", daemon=True)
        self.thread.start()

    def _handle(self, line):
        parts = line.split()
        if len(parts) != 2:
            return "error: bad request"
        verb, name = parts
        node = next((n for n in self.cluster.nodes if n.name == name), None)
        if node is None:
            return "error: no node %s" % name
        try:
            if verb == "stop":
                self.cluster.stop(node)
            elif verb == "start":
                self.cluster.restart(node)
            else:
                return "error: bad verb"
        except Exception as e:  # reported to the script, which must then fail
            return "error: %s" % str(e).splitlines()[0][:200]
        return "ok"

    def _run(self):
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    line = conn.makefile().readline()
                    reply = self._handle(line)
                    self.log.append((time.time(), line.strip(), reply))
                    conn.sendall((reply + "\n").encode())
                except OSError:
                    pass

    def close(self):
        self.done.set()
        self.thread.join(5)
        self.sock.close()


class RollingUpgradeTest(cluster.BalancerTestCase):
    @classmethod
    def make_cluster(cls):
        """make_cluster - the nodes run an installed copy of hamrd that the script replaces."""
        built = harness.hamrd_path()
        cls.bin_dir = os.path.join(cls.env.dir, "bin")
        os.makedirs(cls.bin_dir)
        cls.installed = os.path.join(cls.bin_dir, "hamrd")
        cls.new = os.path.join(cls.env.dir, "hamrd.new")
        shutil.copy2(built, cls.installed)
        shutil.copy2(built, cls.new)
        # Same code, different bytes (ELF ignores trailing data), so the script
        # really installs it and keeps the old one as .prev.
        with open(cls.new, "ab") as f:
            f.write(b"\0hamr rolling-upgrade test\n")
        # The nodes run the installed copy, which the script replaces.
        os.environ["HAMRD"] = cls.installed
        return super().make_cluster()

    @classmethod
    def setUpEnv(cls):
        super().setUpEnv()
        cls.nodectl = NodeControl(cls.cluster, os.path.join(cls.env.dir, "nodectl.sock"))
        cls.helper = os.path.join(cls.env.dir, "nodectl.py")
        with open(cls.helper, "w") as f:
            f.write(NODECTL)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "nodectl", None):
            cls.nodectl.close()
        super().tearDownClass()

    def run_script(self, timeout=200):
        """run_script - rolling-upgrade.sh over every node; (exit status, [(time, line)])."""
        env = self.cluster.nodes[0].ctl_env()  # hamrctl over TLS: an operator's certificate
        helper = "%s %s %s" % (harness.PYTHON, self.helper, self.nodectl.path)
        env.update({
            "HAMR_BIN": self.installed,
            "HAMRCTL": harness.hamrctl_path(),
            "HAMR_STOP_CMD": helper + " stop %n",
            "HAMR_START_CMD": helper + " start %n",
            "HAMR_DRAIN_GRACE": "3",
            "HAMR_CHECK_TIMEOUT": "30",
            "HAMR_DRAIN_TIMEOUT": "40",
            "HAMR_STOP_TIMEOUT": "40",
            "HAMR_READY_TIMEOUT": "60",
        })
        nodes = ["%s=%s:%d,%s:%d" % (n.name, n.host, n.control_port, n.host, n.http_port)
                 for n in self.cluster.nodes]
        proc = subprocess.Popen(["bash", SCRIPT, self.new] + nodes, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        lines = []
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                lines.append((time.time(), line))
                cluster_log("script: %s" % line)
            rc = proc.wait(10)
        finally:
            timer.cancel()
        return rc, lines

    def test_rolling_upgrade_under_load(self):
        self.cluster.wait_ready(60)
        for node in self.cluster.nodes:
            self.lb.wait_state(node, "UP", 20)
        target = self.lb.target()
        load = cluster.LoadGen(self.cluster, "ru", threads=4, max_messages=40000,
                               max_seconds=220, targets=lambda: [target], pace=0.05).start()
        try:
            load.wait_ok(15, 30)
            wall_begin = time.time()
            rc, lines = self.run_script()
            wall_end = time.time()
            load.wait_ok(10, 20, after=time.monotonic())
        finally:
            load.stop()
        text = "\n".join(line for _, line in lines)
        self.assertEqual(rc, 0, "rolling-upgrade.sh failed:\n%s" % text)
        self.assertIn("done: 3 node(s) upgraded", text)
        self.assertTrue(filecmp.cmp(self.installed, self.new, shallow=False))
        self.assertTrue(os.path.exists(self.installed + ".prev"))
        self.assertEqual([v for _, v, _ in self.nodectl.log],
                         ["stop node1", "start node1", "stop node2", "start node2",
                          "stop node3", "start node3"])

        bad = load.select(lambda a: a.permfail)
        self.assertEqual(bad, [], "5xx during the upgrade: %r" % bad[:5])
        # Leadership moves at each drain of the leader and nodes stop: count every
        # drain and every stop as an event for the duplicate windows.
        events = [t for t, line in lines if "quorum check ok" in line or "running:" in line]
        res = cluster.oracle_run(self, self.cluster, load, "rolling-upgrade", events=events,
                                 timeout=LEASE_TIME * 3 + 60)

        times = [float(r.get("time", 0)) for r in self.cluster.sink.records()
                 if (r.get("test_id") or "").startswith(load.prefix + "-")]
        gap = cluster.gap_max(times, wall_begin, wall_end)
        cluster_log("rolling-upgrade: script %.1fs, longest delivery gap %.2fs, %s"
                    % (wall_end - wall_begin, gap, res.summary()))
        self.assertLessEqual(gap, GAP_BOUND, "deliveries stopped for %.2fs" % gap)

        leader = self.cluster.wait_leader(20)
        for node in self.cluster.nodes:
            st = node.status()
            self.assertFalse(field(st, "draining"), "%s still draining" % node.name)
            self.assertEqual(int(field(st, "leader_id", 0)), leader.id)
            code, body = self.cluster.health(node)
            self.assertEqual(code, 200, "%s: %s" % (node.name, body))
            self.lb.wait_state(node, "UP", 20)


if __name__ == "__main__":
    harness.main()
