#!/usr/bin/python3
"""trust_attacker.py - an attacker of a hamr node's ports, run as its own process.

Used by test_cluster_trust.py: the attacks come from a real process over real
sockets, as they would from another machine. Every mode prints JSON lines on
stdout and exits 0 when it could run (what the node did is in the JSON; the
test judges it), 2 on bad usage.

  raft  --port P --payload KIND [--claim ID] [--ca F --cert F --key F]
        One connection to a raft port. With --cert, TLS 1.3 with that client
        certificate; with --ca only, TLS with no certificate; with neither,
        plain TCP. KIND is what is sent once connected (libraft 0.15 encodings,
        little endian, as tests/unit/consensus/test_consensus_tls.c builds them):
          handshake     libraft's handshake claiming --claim
          vote-huge     the handshake, then a RequestVote with term 2^62
          append95-N    the 95-byte packet: the handshake, an AppendEntries
                        header cut inside an entry count of N
          no-nul        a handshake whose 16-byte address has no NUL
          garbage       64 random bytes
        Then reads until the node closes (at most --wait seconds). Prints
        {"handshake": "ok" | "failed: ...", "sent": n, "closed": bool,
         "after": seconds}.
  tls   --port P [--ca F --cert F --key F]   the same with garbage (any TLS port)
  hold  --port P --count N --seconds S [--source ADDR]
        N plain TCP connections (from ADDR, any 127.x.y.z; default 127.0.0.1)
        that send nothing, held until the node closes
        them or S seconds pass (whatever the node sends is read and dropped).
        Prints {"event": "opened", "opened": n, "failed": n, "took": s} once all are
        open, then {"event": "done", "opened": n, "closed": n,
        "close_after": [seconds, ...], "open_at_end": n}.
  flood --port P --count N
        N connections one after another, each sending 512 random bytes and
        closing at once. Prints {"connected": n, "failed": n}.

Bounded: every wait has a time limit, every loop a count.
"""

import argparse
import json
import os
import selectors
import socket
import ssl
import struct
import sys
import time

HOST = "127.0.0.1"


def u64(*vals):
    return b"".join(struct.pack("<Q", v) for v in vals)


def raft_handshake(claim, nul=True):
    """raft_handshake - protocol 1, id, a 16-byte address (with or without its NUL): 40 bytes."""
    addr = b"127.0.0.1:1\0\0\0\0\0" if nul else b"A" * 16
    return u64(1, claim, 16) + addr


def payload(kind, claim):
    if kind == "handshake":
        return raft_handshake(claim)
    if kind == "vote-huge":
        # RequestVote: type 3, header 40: term, candidate, last index, last term, flags.
        return raft_handshake(claim) + u64(3, 40) + u64(1 << 62, claim, 1 << 40, 1 << 62, 0)
    if kind.startswith("append95-"):
        n = int(kind.split("-", 1)[1])
        # AppendEntries: type 1, header length 39: term, prev index, prev term, commit,
        # then the entry count cut after 7 of its 8 bytes.
        pkt = raft_handshake(claim) + u64(1, 39) + u64(1, 0, 0, 0) + u64(n)[:7]
        assert len(pkt) == 95
        return pkt
    if kind == "no-nul":
        return raft_handshake(claim, nul=False)
    if kind == "garbage":
        return os.urandom(64)
    raise ValueError("unknown payload %s" % kind)


def tls_context(args):
    """tls_context - a TLS 1.3 client context, or None for plain TCP."""
    if not args.ca and not args.cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # node certificates carry a URI name only
    if args.ca:
        ctx.load_verify_locations(args.ca)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    return ctx


def wait_closed(sock, wait):
    """wait_closed - read until EOF or an error (the node hung up); False after wait seconds."""
    deadline = time.monotonic() + wait
    for _ in range(10000):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(4096):
                return True
        except socket.timeout:
            return False
        except (ssl.SSLError, OSError):
            return True
    return False


def run_one(args, data):
    """run_one - connect (TLS if asked), send data, wait for the node to close."""
    ctx = tls_context(args)
    out = {"handshake": "none", "sent": 0, "closed": False}
    t0 = time.monotonic()
    raw = socket.create_connection((HOST, args.port), timeout=10)
    sock = raw
    try:
        if ctx is not None:
            try:
                sock = ctx.wrap_socket(raw)
                out["handshake"] = "ok"
            except (ssl.SSLError, OSError) as e:
                # Refused during the handshake (no certificate, another CA): the node closed.
                out["handshake"] = "failed: %s" % e
                out["closed"] = True
                out["after"] = round(time.monotonic() - t0, 3)
                return out
        try:
            sock.sendall(data)
            out["sent"] = len(data)
        except (ssl.SSLError, OSError) as e:
            out["send_error"] = str(e)
        out["closed"] = wait_closed(sock, args.wait)
        out["after"] = round(time.monotonic() - t0, 3)
        return out
    finally:
        sock.close()


def hold(args):
    """hold - open count silent connections, report, then watch them close (bounded)."""
    sel = selectors.DefaultSelector()
    t_open = {}
    failed = 0
    t0 = time.monotonic()
    for _ in range(args.count):
        try:
            s = socket.create_connection((HOST, args.port), timeout=5,
                                         source_address=(args.source, 0))
        except OSError:
            failed += 1
            continue
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        t_open[s] = time.monotonic()
    n_opened = len(t_open)
    print(json.dumps({"event": "opened", "opened": n_opened, "failed": failed,
                      "took": round(time.monotonic() - t0, 3)}), flush=True)
    closed = []
    deadline = time.monotonic() + args.seconds
    while t_open and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.01, min(0.5, deadline - time.monotonic()))):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue  # a greeting or an error reply: read and dropped
            closed.append(round(time.monotonic() - t_open.pop(s), 3))
            sel.unregister(s)
            s.close()
    for s in list(t_open):
        s.close()
    print(json.dumps({"event": "done", "opened": n_opened, "closed": len(closed),
                      "close_after": sorted(closed),
                      "open_at_end": len(t_open)}), flush=True)


def flood(args):
    """flood - count connections, each sending garbage and closing."""
    connected = failed = 0
    for _ in range(args.count):
        try:
            with socket.create_connection((HOST, args.port), timeout=5) as s:
                s.sendall(os.urandom(512))
                connected += 1
        except OSError:
            failed += 1
    print(json.dumps({"connected": connected, "failed": failed}), flush=True)


def main():
    p = argparse.ArgumentParser(description="attack one port of a hamr node")
    p.add_argument("mode", choices=("raft", "tls", "hold", "flood"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--payload", default="garbage")
    p.add_argument("--claim", type=int, default=2)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--wait", type=float, default=15.0)
    p.add_argument("--count", type=int, default=80)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--source", default="127.0.0.1", help="hold: the local address")
    args = p.parse_args()
    if args.mode == "hold":
        hold(args)
    elif args.mode == "flood":
        flood(args)
    else:
        data = payload(args.payload if args.mode == "raft" else "garbage", args.claim)
        print(json.dumps(run_one(args, data)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
