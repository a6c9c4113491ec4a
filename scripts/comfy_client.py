"""The one HTTP client for a ComfyUI server: the concept bank, the demo, the install-route check and the tests
talk to ComfyUI through it (scripts/comfy_server.py starts the server process and does its HTTP through one).

    client = ComfyClient("http://127.0.0.1:8188", timeout=30)
    client.system_stats()                      # NotComfyUI if the URL is some other web server
    state, detail = client.submit(api_graph)   # ("queued", prompt id) or ("refused", ComfyUI's validation errors)
    entry = client.wait(detail, timeout=300)

It refuses an answer that is not ComfyUI's rather than guessing at it: an HTML page, JSON of another shape, an HTTP
status ComfyUI does not answer with, a redirect (never followed: the place it points to is another server), a body
shorter than its Content-Length, a body that does not end (capped in bytes, and the whole answer is held to the
timeout). Those raise NotComfyUI; a server that cannot be reached raises ServerLost. Both messages name the URL and
what came back, for people. Only the standard library.
"""
import html
import http.client
import json
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass

MAX_JSON_BYTES = 16 * 2**20  # /object_info of a ComfyUI with many packs runs to a few MiB; more is not ComfyUI
MAX_FILE_BYTES = 512 * 2**20  # /view of an image or a video, a help page
READ_CHUNK = 64 * 1024
WAIT_POLL_SECONDS = 0.2
EXCERPT_CHARS = 80


class ComfyClientError(Exception):
    """A server could not be used for a request; the message says why and names the server's URL."""


class ServerLost(ComfyClientError):
    """The server does not answer (connection refused or reset, or no answer within the timeout)."""


class NotComfyUI(ComfyClientError):
    """The server answered, but not the way ComfyUI answers: it is another web server, or a broken one."""


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    content_type: str
    body: bytes


class ComfyClient:
    """One ComfyUI server, by URL (http or https, optionally with a path prefix behind a proxy)."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        parts = urllib.parse.urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:  # a port that is not a number
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ValueError(f"{url!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8188)")
        self._https, self._host, self._port, self._prefix = parts.scheme == "https", parts.hostname, port, parts.path

    def __repr__(self):
        return f"ComfyClient({self.url!r})"

    # -- one request --------------------------------------------------------------------------------------------
    def request(self, path: str, payload=None, timeout: float | None = None,
                limit: int = MAX_FILE_BYTES) -> tuple[int, bytes]:
        """(status, body) of a GET, or of a POST of `payload` as JSON; any status, any content."""
        answer = self._exchange(path, payload, timeout or self.timeout, limit)
        return answer.status, answer.body

    def _exchange(self, path: str, payload, timeout: float, limit: int) -> Answer:
        """One request on a fresh connection. Never follows a redirect; reads at most `limit` bytes, and the whole
        answer within `timeout` seconds, so a server that streams forever cannot hang the caller."""
        deadline = time.monotonic() + timeout
        body = json.dumps(payload).encode() if payload is not None else None
        connection_type = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = connection_type(self._host, self._port, timeout=timeout)
        try:
            try:
                connection.request("GET" if body is None else "POST", self._prefix + path, body=body,
                                   headers={"Content-Type": "application/json"} if body is not None else {})
                sock = connection.sock  # the response reads through it after getresponse() lets the connection go
                response = connection.getresponse()
            except OSError as e:  # refused, reset, timed out, closed without an answer (RemoteDisconnected)
                raise ServerLost(f"{self.url} does not answer ({e})") from None
            except http.client.HTTPException as e:
                raise NotComfyUI(f"{self.url} answered {path} with something that is not HTTP "
                                 f"({type(e).__name__}: {one_line(str(e))}): is this URL a ComfyUI server?") from None
            if 300 <= response.status < 400:
                raise self._redirected(path, response)
            content = self._read_body(path, response, sock, deadline, limit, timeout)
            return Answer(response.status, response.reason or "", response.getheader("Content-Type") or "", content)
        finally:
            connection.close()

    def _read_body(self, path: str, response, sock, deadline: float, limit: int, timeout: float) -> bytes:
        announced = response.length  # Content-Length; None when chunked or read until the server closes
        chunks, received = [], 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._endless(path, received, timeout)
            sock.settimeout(remaining)
            try:
                chunk = response.read1(READ_CHUNK)
            except TimeoutError:
                raise self._endless(path, received, timeout) from None
            except (http.client.HTTPException, OSError):  # a chunked body cut short, a reset connection
                raise self._truncated(path, received, announced) from None
            if not chunk:
                break
            received += len(chunk)
            if received > limit:
                raise NotComfyUI(f"{self.url} sent more than {limit / 2**20:g} MiB for {path} without ending its "
                                 f"answer: ComfyUI's answers are smaller; is this URL a ComfyUI server?")
            chunks.append(chunk)
        if announced is not None and received < announced:
            raise self._truncated(path, received, announced)
        return b"".join(chunks)

    def _redirected(self, path: str, response) -> NotComfyUI:
        location = response.getheader("Location")
        target = urllib.parse.urljoin(self.url + path, location) if location else "nowhere (no Location header)"
        return NotComfyUI(f"{self.url} answered {path} with a redirect (HTTP {response.status}) to {target}, not "
                          f"followed: ComfyUI does not redirect its API; give the URL of the ComfyUI server itself")

    def _endless(self, path: str, received: int, timeout: float) -> NotComfyUI:
        return NotComfyUI(f"{self.url} did not finish its answer to {path} within {timeout:g} s "
                          f"({received:,} bytes so far): ComfyUI ends its answers; is this URL a ComfyUI server?")

    def _truncated(self, path: str, received: int, announced) -> NotComfyUI:
        of = f" of the {announced:,} it announced" if announced is not None else ""
        return NotComfyUI(f"{self.url} answered {path} with a truncated body ({received:,} bytes{of}, then the "
                          f"connection closed): is this URL a working ComfyUI server?")

    # -- JSON ---------------------------------------------------------------------------------------------------
    def get_json(self, path: str, shape: type = dict):
        """The JSON ComfyUI answers a GET with (status 200, of the given shape), or NotComfyUI."""
        answer = self._exchange(path, None, self.timeout, MAX_JSON_BYTES)
        return self._expect_shape(path, self._json_of(path, answer, statuses=(200,)), shape)

    def _json_of(self, path: str, answer: Answer, statuses):
        if answer.status not in statuses:
            said = f" ({excerpt(answer.body)})" if answer.body else ""
            raise self._not_comfyui(path, f"HTTP {answer.status} {answer.reason}".strip() + said)
        if looks_like_html(answer):
            raise self._not_comfyui(path, f"an HTML page{page_title(answer.body)}")
        if not answer.body.strip():
            raise self._not_comfyui(path, "an empty body")
        try:
            return json.loads(answer.body)
        except ValueError:  # UnicodeDecodeError included
            kind = answer.content_type.split(";")[0] or "no Content-Type"
            raise self._not_comfyui(path, f"text that is not JSON ({kind}: {excerpt(answer.body)})") from None

    def _expect_shape(self, path: str, value, shape: type):
        if not isinstance(value, shape):
            expected = "an object" if shape is dict else "a list"
            raise self._not_comfyui(path, f"JSON that is not ComfyUI's ({json_kind(value)} where ComfyUI answers "
                                          f"{expected})")
        return value

    def _not_comfyui(self, path: str, what: str) -> NotComfyUI:
        return NotComfyUI(f"{self.url} answered {path} with {what}, not ComfyUI's JSON: is this URL a ComfyUI "
                          f"server?")

    def _require_keys(self, path: str, value: dict, keys) -> dict:
        missing = [k for k in keys if k not in value]
        if missing:
            shown = ", ".join(map(repr, list(value)[:8])) or "none"
            raise self._not_comfyui(path, f"JSON that is not ComfyUI's (an object without "
                                          f"{' and '.join(map(repr, missing))}; its keys: {shown})")
        return value

    # -- ComfyUI's routes ---------------------------------------------------------------------------------------
    def system_stats(self) -> dict:
        """/system_stats, checked to be ComfyUI's: the cheap question 'is this URL a ComfyUI server?'."""
        return self._require_keys("/system_stats", self.get_json("/system_stats"), ("system", "devices"))

    def object_info(self, node_class: str | None = None) -> dict:
        """Every node's definition, or one node's ({} when the server has no such node)."""
        path = "/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else "")
        info = self.get_json(path)
        for name, spec in info.items():
            if not isinstance(spec, dict) or "input" not in spec:
                raise self._not_comfyui(path, f"JSON that is not ComfyUI's ({name!r} is not a node definition "
                                              f"with 'input')")
        return info

    def post_prompt(self, api_graph: dict, client_id: str | None = None) -> tuple[int, dict]:
        """(200, {'prompt_id': ...}) when queued, (400, {'error': ..., 'node_errors': ...}) when refused."""
        return self._prompt_json(self._post_prompt(api_graph, client_id))

    def submit(self, api_graph: dict, client_id: str | None = None) -> tuple[str, str]:
        """('queued', prompt id) or ('refused', why): ComfyUI's validation errors as one line, or the HTTP status it
        gave this prompt (413: too large; 500: a node's check crashed): that prompt fails, the server stays."""
        answer = self._post_prompt(api_graph, client_id)
        if answer.status not in (200, 400) and not looks_like_html(answer):
            said = f" ({excerpt(answer.body)})" if answer.body else ""
            return "refused", f"/prompt answered HTTP {answer.status} {answer.reason}".strip() + said
        status, body = self._prompt_json(answer)
        if status == 200 and "prompt_id" in body:
            return "queued", body["prompt_id"]
        return "refused", describe_refusal(status, body)

    def _post_prompt(self, api_graph: dict, client_id: str | None) -> Answer:
        payload = {"prompt": api_graph, "client_id": client_id or self.client_id}
        return self._exchange("/prompt", payload, self.timeout, MAX_JSON_BYTES)

    def _prompt_json(self, answer: Answer) -> tuple[int, dict]:
        return answer.status, self._expect_shape("/prompt", self._json_of("/prompt", answer, (200, 400)), dict)

    def history(self, prompt_id: str | None = None):
        """A prompt's /history entry (None while the server has none), or the whole history without an id."""
        if prompt_id is None:
            return self.get_json("/history")
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def queue(self) -> dict:
        """/queue: the prompts running and waiting, each [number, prompt id, ...]."""
        queue = self._require_keys("/queue", self.get_json("/queue"), ("queue_running", "queue_pending"))
        for key in ("queue_running", "queue_pending"):
            self._expect_shape("/queue", queue[key], list)
        return queue

    def queued_ids(self) -> set:
        """Ids of the prompts the server is running or has waiting."""
        queue = self.queue()
        return {item[1] for item in queue["queue_running"] + queue["queue_pending"]
                if isinstance(item, list) and len(item) > 1}

    def listed_files(self, folder: str = "cad") -> set:
        """The files of a models folder (empty when the server has no such folder: ComfyUI answers 404)."""
        path = f"/models/{urllib.parse.quote(folder)}"
        answer = self._exchange(path, None, self.timeout, MAX_JSON_BYTES)
        if answer.status == 404:
            return set()
        files = self._expect_shape(path, self._json_of(path, answer, statuses=(200,)), list)
        if not all(isinstance(name, str) for name in files):
            raise self._not_comfyui(path, "JSON that is not ComfyUI's (a list of other things than file names)")
        return set(files)

    def interrupt(self) -> int:
        return self.request("/interrupt", {})[0]

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """The bytes of an output, input or temp file, as the browser fetches it."""
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, body = self.request(f"/view?{query}")
        if status != 200:
            raise ComfyClientError(f"{self.url} answered /view?{query} with HTTP {status}")
        return body

    def wait(self, prompt_id: str, timeout: float = 300, between_polls=None) -> dict:
        """The /history entry of a queued prompt once it has finished (polls). `between_polls()`, if given, runs
        after each unfinished poll and may raise (e.g. when the server's process has exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry and (entry.get("status") or {}).get("completed") is not None:
                return entry
            if between_polls is not None:
                between_polls()
            time.sleep(WAIT_POLL_SECONDS)
        raise TimeoutError(f"prompt {prompt_id} did not finish on {self.url} in {timeout}s")


# --- describing answers to people ---------------------------------------------------------------------------
def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def excerpt(body: bytes) -> str:
    text = one_line(body[:EXCERPT_CHARS * 4].decode("utf-8", "replace"))
    return repr(text[:EXCERPT_CHARS] + ("..." if len(text) > EXCERPT_CHARS else ""))


def looks_like_html(answer: Answer) -> bool:
    start = answer.body[:512].lstrip().lower()
    return "html" in answer.content_type.lower() or start.startswith((b"<!doctype html", b"<html", b"<head"))


def page_title(body: bytes) -> str:
    found = re.search(rb"<title[^>]*>(.*?)</title>", body[:64 * 1024], re.I | re.S)
    title = one_line(html.unescape(found.group(1).decode("utf-8", "replace")))[:EXCERPT_CHARS] if found else ""
    return f" (title {title!r})" if title else ""


def json_kind(value) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}" if value is not None else "null"


def describe_refusal(status: int, body) -> str:
    """ComfyUI's /prompt validation error as one readable line per problem."""
    if not isinstance(body, dict):
        return f"/prompt answered HTTP {status}"
    lines = []
    error = body.get("error")
    if isinstance(error, dict):
        lines.append(f"{error.get('message', '')} {error.get('details', '')}".strip())
    for node_id, node in (body.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            lines.append(f"{node.get('class_type', '?')} (node {node_id}): {e.get('message', '')}: "
                         f"{e.get('details', '')}".strip())
    return "; ".join(line for line in lines if line) or f"/prompt answered HTTP {status}"
