"""A small HTTP server for tests: serves a folder with range requests, as cloud storage serves a COG.

    python -m tests.http_server FOLDER [--token TOKEN]

Prints ``{"port": N}`` on its first line once it listens on 127.0.0.1. With
``--token``, requests without the header ``X-Token: TOKEN`` get 403 Forbidden.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    token: str | None = None

    def log_message(self, format, *args):
        sys.stderr.write("%s\n" % (format % args))

    def _allowed(self) -> bool:
        if self.token is not None and self.headers.get("X-Token") != self.token:
            self.send_error(403, "Forbidden")
            return False
        return True

    def do_HEAD(self):
        if self._allowed():
            super().do_HEAD()

    def do_GET(self):
        if not self._allowed():
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self.send_error(416, "Range Not Satisfiable")
            return
        body = data[start:end + 1]
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    handler = type("Handler", (RangeHandler,), {"token": args.token})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(args.folder)))
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
