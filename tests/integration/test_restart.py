#!/usr/bin/python3
"""test_restart.py - a 250 survives kill -9 and a clean restart of hamrd.

The next hop is down (nothing listens on the relayhost port) while messages
are accepted, so they stay queued. Then hamrd is killed with SIGKILL (or
stopped with SIGTERM, which must exit 0), the sink is started on the
relayhost port, hamrd restarts on the same data_dir, and the oracle of
SECURITY.md section 1 runs: lost = {} and corrupted = {} (sha256 after the
Received: header), duplicates reported, and here also required to be none,
because no delivery was ever in flight to a live next hop.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import field, make_message, new_test_id, sha256_hex, wait_for  # noqa: E402


class RestartTest(harness.HamrTestCase):
    @classmethod
    def setUpEnv(cls):
        cls.sink = cls.env.sink(port=harness.free_port())  # started by the tests
        cls.node = cls.env.node(relayhost_port=cls.sink.port).start()

    def send_batch(self, prefix, n):
        """send_batch - n messages, each must get 250; returns {test_id: (queue_id, sha256)}."""
        sent = {}
        for i in range(n):
            tid = new_test_id("%s%02d" % (prefix, i))
            rcpt = "user%d@example.com" % i
            body = "message %d of %s\r\n%s\r\n" % (i, prefix, "payload %d " % i * 40)
            msg = make_message(tid, "restart@example.org", [rcpt], body=body)
            res = self.node.send("restart@example.org", [rcpt], msg)
            self.assertReply(res, 250, "2.0.0", "message %d: %r" % (i, res))
            sent[tid] = (res.queue_id, sha256_hex(msg))
        return sent

    def oracle(self, sent, timeout=45):
        """oracle - wait until every id arrived, then check lost, corrupted, duplicates.

        The wait also ends when the node's queue is empty: whatever has not
        arrived by then never will.
        """
        def settled():
            self.env.check_nodes_alive()
            got = {r["test_id"] for r in self.sink.records()}
            return all(t in got for t in sent) or self.node.queue() == []

        try:
            wait_for(settled, timeout, "all %d messages to arrive" % len(sent), interval=0.2)
        except AssertionError:
            pass  # the report below names what is missing
        records = [r for r in self.sink.records() if r["test_id"] in sent]
        seen = {}
        for r in records:
            seen.setdefault(r["test_id"], []).append(r)
        lost = sorted(t for t in sent if t not in seen)
        corrupted = sorted(t for t, rs in seen.items()
                           if any(r["sha256_after_received"] != sent[t][1] for r in rs))
        duplicates = {t: len(rs) for t, rs in seen.items() if len(rs) > 1}
        sys.stderr.write("oracle: sent=%d delivered=%d lost=%d corrupted=%d duplicates=%d\n"
                         % (len(sent), len(seen), len(lost), len(corrupted), len(duplicates)))
        self.assertEqual(lost, [], "acknowledged but never delivered")
        self.assertEqual(corrupted, [], "delivered with a different body")
        self.assertEqual(duplicates, {}, "delivered more than once")
        self.node.wait_queue_empty()

    def queued_ids(self):
        return {field(e, "queue_id") for e in self.node.queue()}

    def test_a_kill9_with_20_queued(self):
        if self.sink.proc and self.sink.proc.alive():
            self.sink.stop()
        sent = self.send_batch("k9-", 20)
        want = {q for q, _ in sent.values()}
        self.assertEqual(want - self.queued_ids(), set(), "accepted messages missing from queue")
        self.node.kill9()
        self.sink.start()
        self.node.start()
        self.oracle(sent)

    def test_b_sigterm_with_queue_non_empty(self):
        if self.sink.proc and self.sink.proc.alive():
            self.sink.stop()
        sent = self.send_batch("term-", 5)
        want = {q for q, _ in sent.values()}
        self.assertEqual(want - self.queued_ids(), set())
        self.assertEqual(self.node.stop(), 0, "hamrd must exit 0 on SIGTERM")
        self.sink.start()
        self.node.start()
        self.oracle(sent)


if __name__ == "__main__":
    harness.main()
