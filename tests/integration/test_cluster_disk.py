#!/usr/bin/python3
"""test_cluster_disk.py - a full disk on one node of a 3-node hamr cluster (SECURITY.md F7).

Every node's data_dir lives on a file system of its own: an ext4 image of
IMAGE_MB (made with truncate + mkfs.ext4 -m 0, so root and hamrd's user see
the same free space) loop-mounted in a temporary directory this script owns.
hamr's log segments are preallocated (snapshot_bytes = 16M: segments of
18 MiB). Two limits: below FLOOR (two segments) free, a node stops before
raft's log write can fail (libraft 0.15 cannot survive that: a follower
silently drops entries from its log, a leader crashes) and will not start
again until there is room; below SOFT (min_free 16M + FLOOR) it answers
452 4.3.1 at MAIL and a leader hands leadership on.

  a  follower low (free between FLOOR and SOFT) under load: 452 4.3.1 at
     MAIL to a client talking to it directly, the other two keep answering
     250, the leader does not change; after freeing it takes mail again.
  b  follower full (less than 1 MiB free) under load, then BIG_MESSAGES of
     1 MiB through the others: it stops (exit 1, "disk full" logged) before
     its log write can fail, and a start while still full is refused with
     the reason; the other two go on. After freeing it starts, catches up,
     and its state (digest at the same applied index) is the leader's;
     oracle clean.
  c  leader low: 452 4.3.1 at MAIL, none of its own sessions gets 250 after
     it saw the low space, and it hands leadership to another node within
     HANDOVER_BOUND; after freeing it takes mail again; oracle clean.
  d  leader full: it stops (exit 1), the others elect a leader and go on;
     after freeing it starts and catches up with the same state; oracle clean.

Mounts are removed in tearDownClass and at exit (lazy unmount if busy).
Skipped, with the reason, when not root or when a loop mount is not
possible here.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from cluster import LEASE_TIME, cluster_log  # noqa: E402
from harness import field, mail_reply, make_message, send_message  # noqa: E402

IMAGE_MB = 200  # each node's file system: 3 x 18 MiB segments, snapshots, SOFT to spare
MIN_FREE = 16 << 20  # [storage] min_free as harness.Node sets it
SEGMENT = 18 << 20  # snapshot_bytes 16M + 1/8, as harness.Node sets it
FLOOR = 2 * SEGMENT  # below it hamrd stops
SOFT = MIN_FREE + FLOOR  # below it MAIL gets 452 and a leader hands on
LOW_LEAVE = FLOOR + MIN_FREE // 2  # "low": between FLOOR and SOFT stays free
FULL_SLACK = 1 << 20  # "full": less than this stays free
STOP_BOUND = 10.0  # full -> hamrd has exited
LOW_SEEN_BOUND = 5.0  # fill -> hamrctl status shows free_bytes < min_free
CATCH_UP_BOUND = 20.0
NEW_LEADER_BOUND = 10.0
HANDOVER_BOUND = 5.0  # the full leader sees the low space -> another node leads
BIG_MESSAGES = 24  # x BIG_BYTES through the others while one node is stopped
BIG_BYTES = 1 << 20



def _run(argv, check=True):
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    if check and out.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), out.returncode,
                                                out.stderr.decode(errors="replace").strip()))
    return out


class SmallDisks:
    """SmallDisks - one loop-mounted ext4 image per node under a temporary directory.

    Owns the directory, the images and the mounts: remove() unmounts (lazily
    if still busy) and deletes them; it is idempotent and also runs at exit.
    """

    def __init__(self, names, size_mb=IMAGE_MB):
        self.dir = tempfile.mkdtemp(prefix="hamr-disk-")
        os.chmod(self.dir, 0o755)
        self.size_mb = size_mb
        self.mounts = {}  # name -> mount point
        atexit.register(self.remove)
        for name in names:
            self.add(name)

    @staticmethod
    def check_available():
        """check_available - the reason a loop mount cannot work here, or None."""
        if os.geteuid() != 0:
            return "mounting a file system needs root"
        for tool in ("/usr/sbin/mkfs.ext4", "/usr/bin/fallocate", "/usr/bin/mount"):
            if not os.access(tool, os.X_OK) and not os.access(tool.replace("/usr", ""), os.X_OK):
                return "%s is not installed" % tool
        probe = SmallDisks([], 8)
        try:
            probe.add("probe", size_mb=8)
        except RuntimeError as e:
            return "loop mount not possible: %s" % e
        finally:
            probe.remove()
        return None

    def add(self, name, size_mb=None):
        image = os.path.join(self.dir, name + ".img")
        mnt = os.path.join(self.dir, name)
        os.makedirs(mnt, exist_ok=True)
        _run(["truncate", "-s", "%dM" % (size_mb or self.size_mb), image])
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", image])
        _run(["mount", "-o", "loop", image, mnt])
        self.mounts[name] = mnt
        return mnt

    def free(self, name):
        st = os.statvfs(self.mounts[name])
        return st.f_bavail * st.f_frsize

    def fill(self, name, leave=0):
        """fill - fallocate a file over the space left but about leave bytes; the bytes free."""
        path = os.path.join(self.mounts[name], "filler")
        want = self.free(name) - leave
        while want > 0:
            if _run(["fallocate", "-l", str(want), path], check=False).returncode == 0:
                break
            want -= 256 << 10
        left = self.free(name)
        if left >= leave + FULL_SLACK:
            raise RuntimeError("could not fill %s: %d bytes still free" % (name, left))
        return left

    def unfill(self, name):
        path = os.path.join(self.mounts[name], "filler")
        if os.path.exists(path):
            os.unlink(path)

    def remove(self):
        for name, mnt in list(self.mounts.items()):
            if _run(["umount", mnt], check=False).returncode != 0:
                _run(["umount", "-l", mnt], check=False)
            del self.mounts[name]
        shutil.rmtree(self.dir, ignore_errors=True)


class ClusterDiskTest(cluster.ClusterTestCase):
    disks = None

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(harness.hamrd_path()):
            raise unittest.SkipTest("hamrd not built (%s)" % harness.hamrd_path())
        reason = SmallDisks.check_available()
        if reason:
            raise unittest.SkipTest(reason)
        try:
            super().setUpClass()
        except BaseException:
            if cls.disks:
                cls.disks.remove()
            raise

    @classmethod
    def make_cluster(cls):
        """make_cluster - each node's data_dir on its own small disk."""
        c = cluster.Cluster(cls.env, 3)
        cls.disks = SmallDisks([n.name for n in c.nodes])
        for node in c.nodes:
            node.data_dir = os.path.join(cls.disks.mounts[node.name], "data")
            node.write_config()
        return c

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            if cls.disks:
                cls.disks.remove()

    def setUp(self):
        super().setUp()
        for node in self.cluster.nodes:
            self.disks.unfill(node.name)
        self.revive_all()

    def tearDown(self):
        self.stop_loads()
        for node in self.cluster.nodes:
            self.disks.unfill(node.name)
        super().tearDown()

    def start_load(self, name, targets=None):
        self.load = cluster.LoadGen(self.cluster, name, threads=6, max_messages=20000,
                                    max_seconds=90, targets=targets, pace=0.05,
                                    smtp_timeout=30).start()
        self.load.wait_ok(10, 30)
        return self.load

    def fill_and_wait_low(self, node):
        """fill_and_wait_low - leave LOW_LEAVE free on node's file system; wait until its
        status shows less than SOFT free."""
        t_fill = time.monotonic()
        left = self.disks.fill(node.name, LOW_LEAVE)
        self.assertGreater(left, FLOOR, "the fill went below the stop floor")

        def low():
            s = self.cluster.status(node)
            return s is not None and int(field(s, "free_bytes", SOFT) or 0) < SOFT

        harness.wait_for(low, LOW_SEEN_BOUND, "%s to see its disk low" % node.name,
                         interval=0.1)
        t_low = time.monotonic()
        cluster_log("disk: %s filled (%d bytes left), status shows it after %.2fs"
                    % (node.name, left, t_low - t_fill))
        return t_fill, t_low

    def fill_and_wait_stop(self, node):
        """fill_and_wait_stop - fill node's file system; it must exit 1 saying why."""
        t_fill = time.monotonic()
        self.disks.fill(node.name)
        harness.wait_for(lambda: not node.proc.alive(), STOP_BOUND,
                         "%s to stop on a full disk" % node.name, interval=0.1)
        took = time.monotonic() - t_fill
        self.assertEqual(node.proc.popen.returncode, 1, "exit status on a full disk")
        self.assertIn("stopping before a raft log write fails", node.proc.log_text())
        node.proc.kill9()  # reaped: the harness no longer expects it alive
        cluster_log("disk: %s stopped %.2fs after its disk filled" % (node.name, took))
        # A start while still full is refused, with the reason.
        out = subprocess.run([harness.hamrd_path(), "-c", node.conf_path], capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=30)
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"two log segments", out.stderr)
        return took

    def assert_mail_refused(self, node):
        """assert_mail_refused - a client talking to node directly gets 452 4.3.1 at MAIL."""
        code, text = mail_reply(node.smtp_port, node.host, "full@example.org")
        self.assertEqual(code, 452, "MAIL on a full node: %r" % text)
        self.assertIn("4.3.1", text)
        return code, text

    def compare_state(self, node, timeout=10):
        """compare_state - "" once node and the leader show the same digest at the same
        applied index (bounded); else what differs."""
        c = self.cluster
        last = []

        def same():
            leader = c.wait_leader(5)
            a, b = c.status(node), c.status(leader)
            last[:] = [leader, a, b]
            return (a is not None and b is not None
                    and field(a, "applied_index") == field(b, "applied_index")
                    and field(a, "queue_digest") == field(b, "queue_digest"))

        try:
            harness.wait_for(same, timeout, "the same state on %s and the leader" % node.name,
                             interval=0.25)
            return ""
        except harness.WaitTimeout:
            leader, a, b = last
            keys = ("applied_index", "queue_messages", "queue_rcpts_leased", "queue_digest")
            return ("STATE DIVERGED: %s %s, leader %s %s"
                    % (node.name, {k: field(a, k) for k in keys}, leader.name,
                       {k: field(b, k) for k in keys}))

    def send_big(self, nodes, count, prefix):
        """send_big - count messages of BIG_BYTES round robin over nodes; the attempts."""
        out = []
        for k in range(count):
            node = nodes[k % len(nodes)]
            tid = "%s-%03d" % (prefix, k)
            body = "".join("%s big line %06d %s\r\n" % (tid, i, "x" * 60)
                           for i in range(BIG_BYTES // 80))
            msg = make_message(tid, "big@example.org", ["big@example.com"], body=body)
            a = cluster.Attempt(tid, node.id, "big@example.com", harness.sha256_hex(msg))
            a.t_start = time.monotonic()
            res = send_message(node.smtp_port, "big@example.org", ["big@example.com"], msg,
                               host=node.host, timeout=40)
            a.t_end = time.monotonic()
            a.code, a.text, a.stage = res.code, res.text, res.stage
            out.append(a)
        return out

    def restart_and_compare(self, node):
        """restart_and_compare - free node's disk, start it, wait until it has the leader's state."""
        c = self.cluster
        self.disks.unfill(node.name)
        t0 = time.monotonic()
        c.restart(node)
        c.wait_caught_up(node, CATCH_UP_BOUND)
        took = time.monotonic() - t0
        self.assertEqual(self.compare_state(node), "", "state after the restart")
        return took

    def test_a_follower_low(self):
        c = self.cluster
        leader = c.wait_leader()
        low = next(n for n in c.nodes if n is not leader)
        load = self.start_load("disk-a", targets=c.live_nodes)
        t_fill, t_low = self.fill_and_wait_low(low)
        self.assert_mail_refused(low)
        load.wait_ok(20, 30, after=t_low)
        cluster.pause(max(0.0, t_low + 3.0 - time.monotonic()))
        late_ok = load.select(lambda a: a.node == low.id and a.ok and a.t_start >= t_low)
        others_bad = load.select(lambda a: a.node != low.id and not a.ok and a.t_start >= t_fill)
        self.assertEqual(late_ok, [], "250 from the low node")
        self.assertEqual(others_bad, [], "the other nodes refused mail")
        self.assertIs(c.wait_leader(5), leader, "the leader changed")
        self.assertTrue(low.proc.alive(), "a low (not full) follower must keep running")
        self.disks.unfill(low.name)
        c.probe(low, 20)
        load.wait_ok(10, 20, after=time.monotonic())
        load.stop()
        c.wait_caught_up(low, CATCH_UP_BOUND)
        cluster.oracle_run(self, c, load, "disk-follower-low", events=[],
                           timeout=LEASE_TIME * 3 + 60)

    def test_b_follower_full(self):
        c = self.cluster
        leader = c.wait_leader()
        full = next(n for n in c.nodes if n is not leader)
        others = [n for n in c.nodes if n is not full]
        load = self.start_load("disk-b", targets=c.live_nodes)
        stopped = self.fill_and_wait_stop(full)
        load.wait_ok(20, 30, after=time.monotonic())
        prefix = "disk-b-big-%s" % os.urandom(3).hex()
        big = self.send_big(others, BIG_MESSAGES, prefix)
        self.assertEqual([a for a in big if not a.ok], [], "big messages through the others")
        load.wait_ok(10, 20, after=time.monotonic())
        load.stop()  # the state is compared at rest
        took = self.restart_and_compare(full)
        res = cluster.oracle_run(self, c, [load, types.SimpleNamespace(prefix=prefix,
                                                                       attempts=big)],
                                 "disk-follower-full", events=[],
                                 timeout=LEASE_TIME * 3 + 60)
        sys.stderr.write("disk-follower-full: stopped %.2fs after the fill, restart and "
                         "catch-up %.2fs, dup=%d\n" % (stopped, took, res.dup))

    def test_c_leader_low(self):
        c = self.cluster
        leader = c.wait_leader()
        load = self.start_load("disk-c", targets=c.live_nodes)
        t_fill, t_low = self.fill_and_wait_low(leader)
        wall_low = time.time()
        self.assert_mail_refused(leader)
        new = c.wait_leader(HANDOVER_BOUND, exclude=(leader,))
        t_moved = time.monotonic() - t_low
        load.wait_ok(20, 30, after=t_low)
        direct_ok = load.select(lambda a: a.node == leader.id and a.ok and a.t_start >= t_low)
        self.assertEqual(direct_ok, [], "250 from the low leader's own sessions")
        self.disks.unfill(leader.name)
        c.probe(leader, 30)
        load.wait_ok(10, 20, after=time.monotonic())
        load.stop()
        c.wait_caught_up(leader, CATCH_UP_BOUND)
        res = cluster.oracle_run(self, c, load, "disk-leader-low", events=[wall_low],
                                 timeout=LEASE_TIME * 3 + 60)
        sys.stderr.write("disk-leader-low: handed to %s %.2fs after it saw the low space, "
                         "dup=%d\n" % (new.name, t_moved, res.dup))

    def test_d_leader_full(self):
        c = self.cluster
        leader = c.wait_leader()
        load = self.start_load("disk-d", targets=c.live_nodes)
        wall = time.time()
        stopped = self.fill_and_wait_stop(leader)
        t0 = time.monotonic()
        new = c.wait_leader(NEW_LEADER_BOUND, exclude=(leader,))
        elected = time.monotonic() - t0
        load.wait_ok(20, 30, after=time.monotonic())
        load.stop()  # the state is compared at rest
        took = self.restart_and_compare(leader)
        res = cluster.oracle_run(self, c, load, "disk-leader-full", events=[wall],
                                 timeout=LEASE_TIME * 3 + 60)
        sys.stderr.write("disk-leader-full: stopped %.2fs after the fill, %s leads %.2fs later, "
                         "restart and catch-up %.2fs, dup=%d\n"
                         % (stopped, new.name, elected, took, res.dup))


if __name__ == "__main__":
    unittest.main(verbosity=2)
