"""Fake web servers for the HTTP client's tests (tests/test_comfy_client.py, tests/test_concept_bank.py): a small
ComfyUI that queues and finishes prompts at once, a ComfyUI without the pack, and servers at a ComfyUI URL that are not ComfyUI (an HTML page,
a JSON list, HTTP 500, a redirect, a truncated body, a body that never ends). Each runs in a thread on a free port."""
import contextlib
import http.server
import json
import threading
import time
import urllib.parse


@contextlib.contextmanager
def serving(handler):
    """The URL of an http.server running `handler` in a thread, for the length of the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(http.server.BaseHTTPRequestHandler):
    """Answers without logging each request; counts them (class attribute `hits`, per handler class)."""
    hits = 0

    def log_message(self, *args):
        pass

    def answer(self, status, body: bytes, content_type="application/json", **headers):
        type(self).hits += 1
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


# --- servers that are not ComfyUI ----------------------------------------------------------------------------
class HtmlPage(Quiet):
    def do_GET(self):
        self.answer(200, b"<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head><body>It works</body>"
                         b"</html>", "text/html; charset=utf-8")

    do_POST = do_GET


class JsonList(Quiet):
    def do_GET(self):
        self.answer(200, b"[1, 2, 3]")


class JsonOfAnotherApi(Quiet):
    def do_GET(self):
        self.answer(200, b'{"status": "ok", "version": "2.1"}')


class ServerError(Quiet):
    def do_GET(self):
        self.answer(500, b"500 Internal Server Error\n\nServer got itself in trouble", "text/plain")

    do_POST = do_GET


def redirecting_to(target: str):
    """A handler answering every GET with a 302 to `target` + the same path."""
    class Redirect(Quiet):
        def do_GET(self):
            self.answer(302, b"", "text/plain", Location=target + self.path)
    return Redirect


class Truncated(Quiet):
    """Announces 1000 bytes, sends 10, closes the connection."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b'{"system":')
        self.wfile.flush()
        self.close_connection = True


class EndlessSlow(Quiet):
    """A JSON list that never ends, a few bytes every 50 ms (never enough to hit a size cap)."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            self.wfile.write(b"[")
            while True:
                self.wfile.write(b"0,")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client gave up and closed the connection
            pass


class EndlessFast(Quiet):
    """JSON whitespace as fast as the socket takes it, forever."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        block = b" " * 65536
        try:
            while True:
                self.wfile.write(block)
        except OSError:
            pass


# --- a small ComfyUI -----------------------------------------------------------------------------------------
class ComfyUIWithoutThePack(Quiet):
    """A web server answering like ComfyUI without the pack: /object_info/<unknown node> is {}."""

    def do_GET(self):
        self.answer(200, b'{"system": {}, "devices": []}' if self.path == "/system_stats" else b"{}")


def fake_comfyui(history_entry, objectives=("concept_gap",), scopes=("ff",)):
    """A handler answering like ComfyUI with the pack: /system_stats, CAD Attribute's /object_info, POST /prompt
    (queued at once), /history/<id> (finished at once: `history_entry()`), an empty /queue and models/cad. The class
    attribute `prompts` holds the graphs it was sent, `paths` every path it was asked."""
    class FakeComfyUI(Quiet):
        prompts, paths = [], []

        def send_json(self, value, status=200):
            self.answer(status, json.dumps(value).encode())

        def do_GET(self):
            self.paths.append(self.path)
            path = urllib.parse.urlsplit(self.path).path
            if path == "/system_stats":
                self.send_json({"system": {"comfyui_version": "fake"}, "devices": []})
            elif path == "/object_info/CADAttribute":
                required = {"objective": [list(objectives), {}], "scope": [list(scopes), {}]}
                self.send_json({"CADAttribute": {"input": {"required": required}}})
            elif path.startswith("/history/"):
                prompt_id = urllib.parse.unquote(path.removeprefix("/history/"))
                self.send_json({prompt_id: history_entry()})
            elif path == "/queue":
                self.send_json({"queue_running": [], "queue_pending": []})
            elif path == "/models/cad":
                self.send_json([])
            else:
                self.answer(404, b"404: Not Found", "text/plain")

        def do_POST(self):
            self.paths.append(self.path)
            graph = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompt"]
            self.prompts.append(graph)
            self.send_json({"prompt_id": f"p{len(self.prompts)}", "number": len(self.prompts), "node_errors": {}})

    return FakeComfyUI
