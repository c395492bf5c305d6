#!/usr/bin/python3
"""test_cluster_dsn.py - DSN notices in a 3-node cluster: one per recipient and event, whatever fails.

Each message has two recipients: one the next hop takes (NOTIFY=SUCCESS,
so, the sink offering no DSN, hamr owes one "relayed" notice) and one it
refuses with 550 (NOTIFY=FAILURE: one bounce). Messages go to every node
while the leader is killed with -9 in the middle of the deliveries and
later restarted. The notice is made when the delivery's Outcome is applied,
so it is decided by the replicated log, not by the node that delivered: a
delivery whose Outcome died with the leader is done again after its lease
(the message may then arrive twice, and so may a notice: copies share the
notice's Message-ID), but every accepted message ends with exactly one
relayed notice and exactly one bounce, and the nodes' digests agree.
"""

import os
import smtplib
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
import harness  # noqa: E402
from harness import make_message, new_test_id, wait_for  # noqa: E402

MESSAGES = 40
SENDER = "notices@example.org"


class ClusterDsnTest(cluster.ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        c = cluster.Cluster(cls.env, 3)
        c.sink.options += ["--reject-rcpt", r"^nouser"]
        return c

    def send_one(self, node, tid):
        """send_one - one message through node; True if it got 250 for the data."""
        rcpts = [("ok-%s@example.com" % tid, ["NOTIFY=SUCCESS"]),
                 ("nouser-%s@example.com" % tid, ["NOTIFY=FAILURE"])]
        data = make_message(tid, SENDER, [r for r, _ in rcpts])
        try:
            conn = smtplib.SMTP(node.host, node.smtp_port, local_hostname="client.test",
                                timeout=30)
        except OSError:
            return False
        try:
            conn.ehlo()
            if "dsn" not in conn.esmtp_features:
                return False
            if conn.mail(SENDER)[0] != 250:
                return False
            for r, opts in rcpts:
                if conn.rcpt(r, opts)[0] != 250:
                    return False
            return conn.data(data)[0] == 250
        except (smtplib.SMTPException, OSError):
            return False
        finally:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()

    def notices(self):
        """notices - {test id: [Action values]} of the DSNs from <> to SENDER at the sink.

        A notice is a queued message like any other, so the delivery of one
        can be repeated across the leader kill (at least once); copies of
        one notice have the same Message-ID and count once. Two notices
        about one event would have two.
        """
        out, seen = {}, set()
        for r in self.cluster.sink.records():
            if r["mail_from"] != "" or r["rcpt"] != SENDER:
                continue
            data = self.cluster.sink.read_file(r)
            lines = data.split(b"\r\n")
            mid = next((x for x in lines if x.startswith(b"Message-ID: ")), None)
            if mid is None or mid in seen:
                continue
            seen.add(mid)
            for line in lines:
                if line.startswith(b"X-Test-Id: "):
                    tid = line[len(b"X-Test-Id: "):].decode()
                    actions = [a.split(b":", 1)[1].strip().decode()
                               for a in lines if a.startswith(b"Action:")]
                    out.setdefault(tid, []).extend(actions)
                    break
        return out

    def test_notices_once_across_a_leader_kill(self):
        c = self.cluster
        leader = c.wait_leader()
        accepted, attempted, lock = [], [], threading.Lock()
        stop = threading.Event()

        def sender():
            # Bounded in count and time: MESSAGES messages, 120 s at most.
            deadline = time.monotonic() + 120
            i = 0
            while i < MESSAGES and time.monotonic() < deadline and not stop.is_set():
                live = [n for n in c.nodes if n.proc is not None and n.proc.alive()]
                node = live[i % len(live)]
                tid = new_test_id("cdsn%d" % i)
                with lock:
                    attempted.append(tid)
                if self.send_one(node, tid):
                    with lock:
                        accepted.append(tid)
                    i += 1
                else:
                    time.sleep(0.2)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        try:
            # Kill the leader once deliveries are under way.
            wait_for(lambda: len(c.sink.records()) >= 10, 60, "the first deliveries")
            c.kill9(leader)
            c.wait_leader(30, exclude=(leader,))
            t.join(150)
            self.assertFalse(t.is_alive(), "the sender did not finish")
        finally:
            stop.set()
        c.restart(leader)
        c.wait_caught_up(leader, 90)
        self.assertEqual(len(accepted), MESSAGES)

        def all_noticed():
            n = self.notices()
            return all(len(n.get(tid, [])) >= 2 for tid in accepted)

        wait_for(all_noticed, cluster.LEASE_TIME * 3 + 60, "a relayed notice and a bounce each")
        for node in c.nodes:
            node.wait_queue_empty(60)
        c.wait_converged(90)
        notices = self.notices()
        for tid in accepted:
            self.assertEqual(sorted(notices.get(tid, [])), ["failed", "relayed"],
                             "%s: notices %r" % (tid, notices.get(tid)))
            delivered = [r for r in c.sink.by_test_id(tid) if r["mail_from"] == SENDER]
            self.assertGreaterEqual(len(delivered), 1, tid)
        # A send cut off by the kill is in doubt: its message may have
        # committed. Then it too has exactly its two notices.
        for tid in set(attempted) - set(accepted):
            self.assertIn(sorted(notices.get(tid, [])), ([], ["failed", "relayed"]),
                          "%s (in doubt): notices %r" % (tid, notices.get(tid)))
        extra = set(notices) - set(attempted)
        self.assertEqual(extra, set(), "notices about messages that were never sent")


if __name__ == "__main__":
    harness.main()
