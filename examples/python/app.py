"""Listens on $PORT, as every Slipway app must (standard library only: no requirements)."""
import http.server
import os
import sys


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"Hello from Python {sys.version.split()[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


port = int(os.environ.get("PORT", "8080"))
print(f"listening on {port}", flush=True)
http.server.ThreadingHTTPServer(("", port), Hello).serve_forever()
