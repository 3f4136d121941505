# A webhook receiver for tests: verifies each delivery with the
# `standardwebhooks` package (Webhook(secret).verify), answers 204 if it
# verifies and 400 if not, and tells its log at GET /log.
# Usage: python3 receiver.py SECRET [PORT]; prints the port it listens on.
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks.webhooks import Webhook

hook = Webhook(sys.argv[1])
log = []

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = hook.verify(body, headers)
            log.append({"id": headers["webhook-id"], "verified": True, "type": payload["type"],
                        "key": payload["data"].get("key_id")})
            self.send_response(204)
        except Exception as e:
            log.append({"id": headers.get("webhook-id"), "verified": False, "error": type(e).__name__})
            self.send_response(400)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        out = json.dumps(log).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
