#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) for the delivery benchmark and crash test.

It accepts every message and counts how often it received each Message-ID. It never deduplicates:
a message sent twice is counted twice, so `duplicates` in the stats is the proof that matters.

  python3 bench/smtp_sink.py --smtp-port 2525 --http-port 2580

HTTP (the "message lookup" a relay offers, used by rapport only for hand-offs interrupted by a crash):
  GET /stats             {"messages": N, "distinct": D, "duplicates": K, "max_per_id": M}
  GET /messages/<id>     {"received": n}   (the Message-ID with or without <>, URL-encoded)
  POST /reset            forget everything
"""

import argparse
import asyncio
import json
import re
import signal
import urllib.parse

from aiosmtpd.smtp import SMTP

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


class Counter:
    def __init__(self):
        self.counts = {}
        self.messages = 0

    async def handle_DATA(self, server, session, envelope):
        m = MESSAGE_ID.search(envelope.original_content or envelope.content)
        key = m.group(1).decode() if m else "<none>"
        self.counts[key] = self.counts.get(key, 0) + 1
        self.messages += 1
        return "250 OK queued"

    def stats(self):
        dup = sum(c - 1 for c in self.counts.values() if c > 1)
        return {
            "messages": self.messages,
            "distinct": len(self.counts),
            "duplicates": dup,
            "max_per_id": max(self.counts.values(), default=0),
        }


async def http(counter, reader, writer):
    try:
        line = (await reader.readline()).decode(errors="replace")
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        method, path, _ = (line.split(" ", 2) + ["", ""])[:3]
        status, body = 404, {"error": "not found"}
        if method == "GET" and path == "/stats":
            status, body = 200, counter.stats()
        elif method == "GET" and path.startswith("/messages/"):
            key = urllib.parse.unquote(path[len("/messages/"):])
            if not key.startswith("<"):
                key = f"<{key}>"
            status, body = 200, {"received": counter.counts.get(key, 0)}
        elif method == "POST" and path == "/reset":
            counter.counts.clear()
            counter.messages = 0
            status, body = 200, {"reset": True}
        data = json.dumps(body).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            f"connection: close\r\n\r\n".encode() + data
        )
        await writer.drain()
    finally:
        writer.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--smtp-port", type=int, default=2525)
    p.add_argument("--http-port", type=int, default=2580)
    args = p.parse_args()
    counter = Counter()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # The SMTP server runs on this loop (not a controller thread), so counting needs no locks.
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(counter, hostname="sink.localhost", data_size_limit=10 * 1024 * 1024, loop=loop),
            host=args.host, port=args.smtp_port, backlog=1024,
        )
    )
    httpd = loop.run_until_complete(
        asyncio.start_server(lambda r, w: http(counter, r, w), host=args.host, port=args.http_port)
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    print(f"smtp sink on {args.host}:{args.smtp_port}, stats on http://{args.host}:{args.http_port}/stats", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        httpd.close()
        print(json.dumps(counter.stats()), flush=True)


if __name__ == "__main__":
    main()
