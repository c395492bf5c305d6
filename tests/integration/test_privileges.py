#!/usr/bin/python3
"""test_privileges.py - hamrd never runs as root: [node] user, the switch, the capabilities.

Needs root (it is what is tested); skips with the reason otherwise.

- Started as root without [node] user, with user = root, or with a user that
  does not exist, hamrd exits 1 with a message naming the config file and
  opens nothing (no listener, no data directory); --check-config reports the
  unknown user and the root user but not who starts it.
- With user = nobody it listens on a port below 1024 (kept the right to bind
  it), then runs with nobody's uid and gid in every slot, no supplementary
  group but nobody's, no capability left (effective, permitted, ambient),
  no_new_privs set, inside its data directory, every file of which is
  nobody's. It relays a message end to end.
- A data directory left owned by root (an older hamr run as root) is handed
  over on the next start, and the queue in it survives.
"""

import os
import pwd
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import make_message, new_test_id, wait_for  # noqa: E402


def low_free_port():
    """low_free_port - a free TCP port on 127.0.0.1 below 1024 (only root may bind it)."""
    for port in range(600, 1000, 7):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise unittest.SkipTest("no free port below 1024 on 127.0.0.1")


def proc_status(pid):
    """proc_status - /proc/PID/status as {field: value}."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


@unittest.skipUnless(os.geteuid() == 0, "needs root: it checks how hamrd gives root up")
class PrivilegesTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.sink = cls.env.sink().start()
        cls.nobody = pwd.getpwnam("nobody")

    def refused(self, name, node_overrides, expect):
        """refused - hamrd with these [node] settings exits 1 saying expect, having opened nothing."""
        node = self.env.node(name=name, relayhost_port=self.sink.port,
                             overrides={"node": node_overrides})
        node.start(wait=False)
        wait_for(lambda: not node.proc.alive(), 20, "%s to exit" % name)
        self.assertEqual(node.proc.popen.returncode, 1)
        node.proc.kill9()  # reaped: no longer a node the harness expects alive
        log = node.proc.log_text()
        self.assertIn(expect, log)
        self.assertIn(node.conf_path, log)
        self.assertFalse(os.path.exists(node.data_dir), "data directory created before refusing")
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", node.smtp_port), timeout=2).close()
        return node

    def check_config(self, node):
        out = harness.subprocess.run([harness.hamrd_path(), "--check-config", "-c", node.conf_path],
                                     capture_output=True, text=True, timeout=30)
        return out.returncode, out.stdout + out.stderr

    def test_a_refuses_root(self):
        node = self.refused("nouser", {"user": None}, "refusing to run as root")
        rc, out = self.check_config(node)
        self.assertEqual((rc, out.strip()), (0, "config ok"), "who starts it is not a config error")

        node = self.refused("rootuser", {"user": "root"}, '[node] user: "root" is root')
        rc, out = self.check_config(node)
        self.assertEqual(rc, 1, out)
        self.assertIn('"root" is root', out)

        node = self.refused("nosuch", {"user": "hamr-no-such-user"},
                            '[node] user: no such user "hamr-no-such-user"')
        rc, out = self.check_config(node)
        self.assertEqual(rc, 1, out)
        self.assertIn("no such user", out)

    def test_b_runs_as_user_without_capabilities(self):
        port = low_free_port()
        node = self.env.node(name="dropped", relayhost_port=self.sink.port,
                             overrides={"node": {"user": "nobody"}}, ports={"smtp": port})
        node.start()
        pid = node.proc.popen.pid
        st = proc_status(pid)
        uid, gid = self.nobody.pw_uid, self.nobody.pw_gid
        self.assertEqual(st["Uid"].split(), [str(uid)] * 4)
        self.assertEqual(st["Gid"].split(), [str(gid)] * 4)
        self.assertEqual(st["Groups"].split(), [str(gid)])
        for cap in ("CapEff", "CapPrm", "CapAmb", "CapInh"):
            self.assertEqual(int(st[cap], 16), 0, "%s = %s" % (cap, st[cap]))
        self.assertEqual(st["NoNewPrivs"], "1")
        self.assertEqual(os.readlink("/proc/%d/cwd" % pid), os.path.realpath(node.data_dir))
        # The low port is really hamrd's.
        conn = harness.RawSMTP(port)
        self.assertEqual(conn.greeting[0], 220)
        conn.close()

        tid = new_test_id("priv")
        res = node.send("a@example.org", ["b@example.com"],
                        make_message(tid, "a@example.org", ["b@example.com"]))
        self.assertReply(res, 250, "2.0.0")
        self.sink.wait_test_id(tid)

        owners = set()
        for root, dirs, files in os.walk(node.data_dir):
            for name in dirs + files + ["."]:
                s = os.lstat(os.path.join(root, name))
                owners.add((s.st_uid, s.st_gid))
        self.assertEqual(owners, {(uid, gid)})
        self.assertEqual(node.stop(), 0)

    def test_c_takes_over_a_root_owned_data_dir(self):
        # The next hop is down, so the message stays in the queue across the restart.
        node = self.env.node(name="takeover", relayhost_port=harness.free_port())
        node.start()
        tid = new_test_id("keep")
        res = node.send("a@example.org", ["b@example.com"],
                        make_message(tid, "a@example.org", ["b@example.com"]))
        self.assertReply(res, 250, "2.0.0")
        queued = sorted(harness.field(e, "queue_id") for e in node.queue())
        self.assertEqual(len(queued), 1, node.queue())
        self.assertEqual(node.stop(), 0)
        for root, dirs, files in os.walk(node.data_dir):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), 0, 0)
        os.chown(node.data_dir, 0, 0)
        os.chmod(node.data_dir, 0o700)

        node.start()
        self.assertEqual(sorted(harness.field(e, "queue_id") for e in node.queue()), queued)
        for root, dirs, files in os.walk(node.data_dir):
            for name in dirs + files + ["."]:
                self.assertEqual(os.lstat(os.path.join(root, name)).st_uid, self.nobody.pw_uid)
        self.assertEqual(node.stop(), 0)


if __name__ == "__main__":
    harness.main()
