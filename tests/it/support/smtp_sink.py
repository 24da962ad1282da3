"""A real SMTP server for the e-mail tests (aiosmtpd), on a free loopback port.

Usage: python3 smtp_sink.py IDS_FILE [MAX_SECONDS]

Appends the Message-ID of every accepted message to IDS_FILE, one per line, before it answers
250, so a test can wait on the file. Binds 127.0.0.1 port 0 itself (aiosmtpd's CLI cannot) and
prints "listening on 127.0.0.1:PORT" on stderr once it accepts connections. Stops by itself
after MAX_SECONDS (default 600) in case nobody kills it.

Recipients steer the outcome, to exercise a sender's failure paths:
  nouser...@  -> 550 at RCPT (permanent)
  later...@   -> 451 at RCPT the first time that address is seen, accepted after (temporary)
"""

import asyncio
import email
import socket
import sys

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, path):
        self.path = path
        self.deferred = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("nouser"):
            return "550 5.1.1 no such user here"
        if local.startswith("later") and address not in self.deferred:
            self.deferred.add(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        mid = (message.get("Message-ID") or "<none>").strip()
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(mid + "\n")
        return "250 2.0.0 accepted"


async def main(path, max_seconds):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    handler = Sink(path)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.test"), sock=sock
    )
    port = sock.getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    try:
        await asyncio.wait_for(server.serve_forever(), timeout=max_seconds)
    except asyncio.TimeoutError:
        print("smtp_sink: lifetime over, stopping", file=sys.stderr, flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: smtp_sink.py IDS_FILE [MAX_SECONDS]")
    limit = float(sys.argv[2]) if len(sys.argv) == 3 else 600.0
    asyncio.run(main(sys.argv[1], limit))
