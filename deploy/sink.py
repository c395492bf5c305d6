#!/usr/bin/python3
"""sink.py - a recording SMTP sink: the downstream "next hop" for hamr tests.

Accepts mail on one address, stores every delivered message as a file and
appends one JSON line per (message, recipient) to a log, so that tests can
check what hamr delivered: what was lost, duplicated or corrupted.

    sink.py --listen 127.0.0.1:2600 --dir DIR [--log FILE.jsonl]
            [--tempfail-first N] [--reject-rcpt REGEX] [--tempfail-rcpt REGEX] [--smtputf8]
            [--data-start-delay SECONDS] [--data-delay SECONDS]

Owns: DIR (message files "<time>-<n>.eml", written to a temporary name and
renamed, so a reader never sees half a file) and the log (one JSON object per
line, written after the message file, flushed at once):

    {"time": unix seconds, "mail_from": "" for <>, "rcpt": ...,
     "sha256": of the data as received (after dot un-stuffing),
     "sha256_after_received": of the data after its first header, if that
        header is a Received: header (the one hamr adds), with its folded
        continuation lines, is removed,
     "test_id": the X-Test-Id header or null, "file": path of the message,
     "peer": the client's address}

Behaviour switches: --tempfail-first N answers the first N DATA commands with
"451 4.3.0 try later"; --reject-rcpt answers matching recipients with
"550 5.1.1 no such user"; --tempfail-rcpt answers matching recipients with
"451 4.3.0 try later". Every refusal is also printed on stdout, one line per
event, so a test can count them. --smtputf8 offers SMTPUTF8 (RFC 6531); each
record then also lists the MAIL parameters it got ("mail_options").
--data-delay SECONDS waits that long after the end of the data before it
stores the message and answers (a slow next hop: deliveries stay in flight).

A slow next hop: --data-start-delay waits that long before answering DATA
with 354 (the client has not sent the body yet); --data-delay waits that long
before answering the final dot. The message is stored and logged as soon as
the final dot is in, before that wait, as a real MTA that has taken the
message would: a client that drops the connection during the wait has still
delivered it (and delivers it twice if it tries again).

Prints "sink listening on HOST:PORT" once it accepts connections (PORT may be
given as 0: the bound port is printed), and "sink: sessions open=N peer=IP"
each time a client connects or says QUIT or goes: N counts the connections
open that have not said QUIT (a client that said it is leaving), so a test can
take the most a next hop had at once. Exits 0 on SIGTERM or SIGINT.

Security: this is a test tool. It parses untrusted SMTP input with aiosmtpd,
which bounds line length and message size; recipients and senders go into the
JSON log through json.dumps (escaped) and never into file names.

Run with Debian's /usr/bin/python3 (python3-aiosmtpd).
"""

import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import sys
import time

from aiosmtpd.smtp import SMTP, syntax

SINK_MAX_MESSAGE = 64 * 1024 * 1024  # bytes; larger than hamr's own 64M cap
SINK_MAX_LINE = 64 * 1024  # record long lines instead of refusing them


class SinkSMTP(SMTP):
    """SinkSMTP - aiosmtpd session with a longer line limit than RFC 5321's 1000, and the
    wait before 354 of --data-start-delay."""

    line_length_limit = SINK_MAX_LINE

    def connection_made(self, transport):
        self.sink_open = True
        self.event_handler.sessions(+1, transport.get_extra_info("peername"))
        super().connection_made(transport)

    def data_received(self, data):
        # Counted as gone once QUIT is in, before the reply: the moment the client let go.
        if getattr(self, "sink_open", False) and data[:4].upper() == b"QUIT":
            self.sink_open = False
            self.event_handler.sessions(-1, self.transport.get_extra_info("peername"))
        super().data_received(data)

    def connection_lost(self, error):
        if getattr(self, "sink_open", False):
            self.sink_open = False
            self.event_handler.sessions(-1, None)
        super().connection_lost(error)

    @syntax("DATA")
    async def smtp_DATA(self, arg):
        delay = getattr(self.event_handler, "data_start_delay", 0)
        if delay > 0 and self.envelope.rcpt_tos:
            await asyncio.sleep(delay)
        return await super().smtp_DATA(arg)


def sink_header_value(data, name):
    """sink_header_value - the unfolded value of the first header NAME, or None."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    lines = head.split(b"\r\n")
    want = name.lower().encode("ascii") + b":"
    for i, line in enumerate(lines):
        if line.lower().startswith(want):
            value = line[len(want):]
            for cont in lines[i + 1:]:
                if not cont.startswith((b" ", b"\t")):
                    break
                value += cont
            return value.strip().decode("utf-8", "replace")
    return None


def sink_strip_received(data):
    """sink_strip_received - data without its first header if that is a Received: header.

    The header hamr adds is always the first line of the message. Its folded
    continuation lines (starting with space or tab) are removed with it.
    """
    if not data[:9].lower() == b"received:":
        return data
    pos = data.find(b"\r\n")
    while pos >= 0 and data[pos + 2: pos + 3] in (b" ", b"\t"):
        pos = data.find(b"\r\n", pos + 2)
    if pos < 0:
        return b""
    return data[pos + 2:]


class SinkHandler:
    """SinkHandler - aiosmtpd hooks: policy switches, storage and the JSON log."""

    def __init__(self, args):
        self.dir = os.path.abspath(args.dir)
        self.log_path = args.log or os.path.join(args.dir, "sink.jsonl")
        self.tempfail_left = args.tempfail_first
        self.reject_rcpt = re.compile(args.reject_rcpt) if args.reject_rcpt else None
        self.tempfail_rcpt = re.compile(args.tempfail_rcpt) if args.tempfail_rcpt else None
        self.data_start_delay = args.data_start_delay
        self.data_delay = args.data_delay
        self.count = 0
        self.open = 0
        self.log = open(self.log_path, "a", encoding="utf-8")

    def sessions(self, change, peer):
        """sessions - a connection came (+1) or said QUIT or went (-1)."""
        self.open += change
        self.event("sessions", open=self.open, peer=peer[0] if isinstance(peer, tuple) else "")

    def event(self, what, **fields):
        """event - one line on stdout per refusal or delivery."""
        parts = " ".join("%s=%s" % (k, json.dumps(v)) for k, v in fields.items())
        print("sink: %s %s" % (what, parts), flush=True)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_rcpt and self.reject_rcpt.search(address):
            self.event("reject_rcpt", rcpt=address)
            return "550 5.1.1 no such user"
        if self.tempfail_rcpt and self.tempfail_rcpt.search(address):
            self.event("tempfail_rcpt", rcpt=address)
            return "451 4.3.0 try later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        mail_from = "" if envelope.mail_from in ("<>", None) else envelope.mail_from
        if self.tempfail_left > 0:
            self.tempfail_left -= 1
            self.event("tempfail_data", mail_from=mail_from, rcpts=envelope.rcpt_tos)
            return "451 4.3.0 try later"
        data = bytes(envelope.original_content or b"")
        self.count += 1
        now = time.time()
        name = "%.6f-%d.eml" % (now, self.count)
        path = os.path.join(self.dir, name)
        tmp = os.path.join(self.dir, ".tmp-" + name)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        record = {
            "time": now,
            "mail_from": mail_from,
            "sha256": hashlib.sha256(data).hexdigest(),
            "sha256_after_received": hashlib.sha256(sink_strip_received(data)).hexdigest(),
            "test_id": sink_header_value(data, "X-Test-Id"),
            "file": path,
            "peer": session.peer[0] if isinstance(session.peer, tuple) else str(session.peer),
            "mail_options": list(envelope.mail_options or []),
        }
        for rcpt in envelope.rcpt_tos:
            record["rcpt"] = rcpt
            self.log.write(json.dumps(record, sort_keys=True) + "\n")
        self.log.flush()
        os.fsync(self.log.fileno())
        self.event("delivered", file=path, mail_from=mail_from, rcpts=envelope.rcpt_tos)
        if self.data_delay > 0:
            await asyncio.sleep(self.data_delay)
        return "250 2.0.0 Ok: stored as %s" % name


def sink_parse_hostport(text):
    """sink_parse_hostport - "host:port" or "[host]:port" into (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return host.strip("[]") or "127.0.0.1", int(port)


async def sink_main(args):
    """sink_main - serve until SIGTERM or SIGINT."""
    os.makedirs(args.dir, exist_ok=True)
    handler = SinkHandler(args)
    loop = asyncio.get_running_loop()
    host, port = args.listen

    def factory():
        return SinkSMTP(handler, hostname="sink.test", ident="hamr-test-sink",
                        data_size_limit=SINK_MAX_MESSAGE, decode_data=False, loop=loop,
                        enable_SMTPUTF8=args.smtputf8)

    server = await loop.create_server(factory, host=host, port=port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print("sink listening on %s:%d" % (bound[0], bound[1]), flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    handler.log.close()


def main():
    parser = argparse.ArgumentParser(description="recording SMTP sink for hamr tests")
    parser.add_argument("--listen", type=sink_parse_hostport, default=("127.0.0.1", 2600))
    parser.add_argument("--dir", required=True, help="where message files go")
    parser.add_argument("--log", help="JSON-lines log (default DIR/sink.jsonl)")
    parser.add_argument("--tempfail-first", type=int, default=0, metavar="N")
    parser.add_argument("--reject-rcpt", metavar="REGEX")
    parser.add_argument("--tempfail-rcpt", metavar="REGEX")
    parser.add_argument("--smtputf8", action="store_true", help="offer SMTPUTF8 (RFC 6531)")
    parser.add_argument("--data-start-delay", type=float, default=0.0, metavar="SECONDS",
                        help="wait before answering DATA with 354")
    parser.add_argument("--data-delay", type=float, default=0.0, metavar="SECONDS",
                        help="wait before answering the final dot (the message is stored first)")
    args = parser.parse_args()
    try:
        asyncio.run(sink_main(args))
    except OSError as e:
        print("sink: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
