#!/usr/bin/env python3
"""A zero-work state server speaking Terraform's http backend protocol.

The baseline of the terraform rows of `bench/run`: every state and lock
lives in a dict in memory, nothing is checked, kept or written to disk.
GET answers the stored body (200) or 404; POST and PUT store the body;
DELETE removes it; LOCK takes the lock (200) or answers 423 with the
holder's LockInfo; UNLOCK releases it. Any path is a state.

Prints `listening on 127.0.0.1:PORT` once ready, and exits when its stdin
closes, so it never outlives the process that started it.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATES = {}
LOCKS = {}
GUARD = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _key(self):
        return self.path.split("?", 1)[0]

    def do_GET(self):
        with GUARD:
            body = STATES.get(self._key())
        if body is None:
            self._answer(404)
        else:
            self._answer(200, body)

    do_HEAD = do_GET

    def do_POST(self):
        body = self._body()
        with GUARD:
            STATES[self._key()] = body
        self._answer(200)

    do_PUT = do_POST

    def do_DELETE(self):
        self._body()
        with GUARD:
            STATES.pop(self._key(), None)
        self._answer(200)

    def do_LOCK(self):
        body = self._body()
        try:
            lock_id = json.loads(body or b"{}").get("ID", "")
        except ValueError:
            lock_id = ""
        with GUARD:
            held = LOCKS.get(self._key())
            if held is not None and held[0] != lock_id:
                holder = held[1]
            else:
                LOCKS[self._key()] = (lock_id, body)
                holder = None
        if holder is None:
            self._answer(200)
        else:
            self._answer(423, holder)

    def do_UNLOCK(self):
        self._body()
        with GUARD:
            LOCKS.pop(self._key(), None)
        self._answer(200)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
