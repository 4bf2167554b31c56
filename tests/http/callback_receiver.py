"""A receiver of job callbacks for the tests, on Python's own HTTP server.

Usage: callback_receiver.py TOKEN FAIL_FIRST

It prints {"port": N} once it listens, then one JSON line per request: its method,
path, the status it answered (500 to the first FAIL_FIRST requests, 200 after), the
token header, whether X-Lava-Signature is the HMAC-SHA256 of the body keyed by TOKEN
(computed here with Python's hmac, not the dispatcher's code), and the body.
"""

import hashlib
import hmac
import http.server
import json
import sys

TOKEN = sys.argv[1].encode()
FAIL_FIRST = int(sys.argv[2])
SEEN = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.answer()

    def do_PUT(self):
        self.answer()

    def answer(self):
        global SEEN
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        expected = "sha256=" + hmac.new(TOKEN, body, hashlib.sha256).hexdigest()
        given = self.headers.get("X-Lava-Signature", "")
        SEEN += 1
        status = 500 if SEEN <= FAIL_FIRST else 200
        print(
            json.dumps(
                {
                    "method": self.command,
                    "path": self.path,
                    "status": status,
                    "token": self.headers.get("X-Ci-Token"),
                    "signature_valid": hmac.compare_digest(expected, given),
                    "body": json.loads(body),
                }
            ),
            flush=True,
        )
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
