#!/usr/bin/python3
"""test_wan_delay.py - tests/tools/wan_delay, the WAN delay of the fault campaign.

An echo server on 127.0.0.1 behind wan_delay with a one-way delay of DELAY_MS:
  round_trip      a few bytes come back no sooner than two delays (one each way)
  bulk_in_order   1 MiB (more than wan_delay's 256 KiB buffer bound given here)
                  comes back whole and in order, and no sooner than two delays
  end_of_stream   the client's shutdown reaches the echo server through the
                  proxy and comes back as an end of stream
  refused         a connection whose upstream refuses is closed, and wan_delay
                  says so on its output and keeps serving
Only lower bounds on time are asserted: a loaded machine may be slower, never
faster than the delay. WAN_DELAY names the binary (ctest sets it).
"""

import os
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import free_port, wait_for  # noqa: E402

DELAY_MS = 100
MAX_BUFFER = 256 * 1024
BULK = 1024 * 1024
IO_TIMEOUT = 30.0  # seconds for any one socket operation
READY_BOUND = 10.0


class Echo:
    """Echo - a TCP echo server on 127.0.0.1 (one thread per connection)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.eofs = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(IO_TIMEOUT)
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    self.eofs += 1
                    conn.shutdown(socket.SHUT_WR)
                    return
                conn.sendall(data)

    def close(self):
        self.sock.close()


def read_exactly(sock, n):
    """read_exactly - n bytes from sock, or fewer at its end of stream."""
    parts, got = [], 0
    while got < n:
        data = sock.recv(min(65536, n - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class WanDelayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.binary = os.environ.get("WAN_DELAY", "")
        if not os.access(cls.binary, os.X_OK):
            raise unittest.SkipTest("WAN_DELAY does not name the wan_delay binary")
        cls.echo = Echo()
        cls.port = free_port()
        cls.dead_port = free_port()  # nothing listens there: the upstream refuses
        cls.refused_port = free_port()
        cls.proc = subprocess.Popen(
            [cls.binary, "--max-buffer", str(MAX_BUFFER),
             "%d=127.0.0.1:%d/%d" % (cls.port, cls.echo.port, DELAY_MS),
             "%d=127.0.0.1:%d/%d" % (cls.refused_port, cls.dead_port, DELAY_MS)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True)
        cls.lines = []
        cls.reader = threading.Thread(target=cls._read_output, daemon=True)
        cls.reader.start()
        wait_for(lambda: any("wan_delay: ready" in ln for ln in cls.lines), READY_BOUND,
                 "wan_delay ready", interval=0.05)

    @classmethod
    def _read_output(cls):
        for line in cls.proc.stdout:
            cls.lines.append(line.rstrip("\n"))

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(10)
        cls.echo.close()

    def connect(self, port=None):
        s = socket.create_connection(("127.0.0.1", port or self.port), timeout=IO_TIMEOUT)
        self.addCleanup(s.close)
        return s

    def test_round_trip(self):
        s = self.connect()
        t0 = time.monotonic()
        s.sendall(b"ping")
        self.assertEqual(read_exactly(s, 4), b"ping")
        self.assertGreaterEqual(time.monotonic() - t0, 2 * DELAY_MS / 1000.0 * 0.95)

    def test_bulk_in_order(self):
        s = self.connect()
        data = bytes((i * 7 + i // 251) & 0xFF for i in range(BULK))
        t0 = time.monotonic()
        sender = threading.Thread(target=s.sendall, args=(data,), daemon=True)
        sender.start()
        back = read_exactly(s, BULK)
        sender.join(IO_TIMEOUT)
        self.assertEqual(len(back), BULK)
        self.assertTrue(back == data, "the bytes came back changed or out of order")
        self.assertGreaterEqual(time.monotonic() - t0, 2 * DELAY_MS / 1000.0 * 0.95)

    def test_end_of_stream(self):
        s = self.connect()
        before = self.echo.eofs
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(read_exactly(s, 100), b"last words")  # then the end of stream
        wait_for(lambda: self.echo.eofs > before, IO_TIMEOUT, "the echo server saw the end")

    def test_refused(self):
        s = self.connect(self.refused_port)
        try:
            s.sendall(b"anyone?")
            back = read_exactly(s, 7)
        except (ConnectionResetError, BrokenPipeError):
            back = b""  # closed with a reset: as good as an end of stream here
        self.assertEqual(back, b"", "a refused upstream must close the client")
        wait_for(lambda: any("%d -> 127.0.0.1:%d" % (self.refused_port, self.dead_port) in ln
                             for ln in self.lines), IO_TIMEOUT, "the refusal on wan_delay's output")
        self.assertIsNone(self.proc.poll(), "wan_delay exited")
        t = self.connect()  # still serving the other mapping
        t.sendall(b"ok")
        self.assertEqual(read_exactly(t, 2), b"ok")


if __name__ == "__main__":
    unittest.main(verbosity=2)
