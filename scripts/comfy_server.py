"""Start and drive a real ComfyUI server (main.py) for tests and the demo.

    with ComfyServer("tests/.artifacts/server", checkpoint=path) as srv:
        result = srv.run(api_graph, timeout=300)

Everything the server reads or writes (custom_nodes, models, input, output, temp, user)
lives under `base_dir` via `--base-directory`, so runs never touch the ComfyUI install.
The repo itself is symlinked in as custom_nodes/comfyui-cad, exactly how users install it.
This class owns the process; its HTTP goes through `self.client`, a scripts.comfy_client.ComfyClient (the methods
below that talk to the server hand over to it).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

from scripts.comfy_client import ComfyClient, ComfyClientError, ServerLost
from scripts.pack_bootstrap import REPO, find_comfyui

PACK_DIR_NAME = "comfyui-cad"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _symlink(src, dst):
    if os.path.lexists(dst):
        os.remove(dst)
    os.symlink(src, dst)


class ComfyServer:
    def __init__(self, base_dir, port=None, extra_args=(), checkpoint=None, comfyui_path=None,
                 log_path=None, isolate=True, startup_timeout=180, extra_packs=(), model_files=None):
        """extra_packs: folders of further custom node packs to install beside this one (tests' helper nodes);
        model_files: {models subfolder: [file, ...]} linked into the server's models folder."""
        self.base_dir = os.path.abspath(base_dir)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.checkpoint = checkpoint
        self.ckpt_name = os.path.basename(checkpoint) if checkpoint else None
        self.comfyui_path = comfyui_path or find_comfyui()
        if self.comfyui_path is None:
            raise RuntimeError("ComfyUI not found: set COMFYUI_PATH or run `make test` / `make setup`")
        self.log_path = log_path or os.path.join(REPO, "tests", ".artifacts", f"comfy_server_{self.port}.log")
        self.isolate = isolate  # load only our pack (and extra_packs), so other packs cannot break the run
        self.extra_packs = [os.path.abspath(p) for p in extra_packs]
        self.model_files = {sub: [os.path.abspath(f) for f in files] for sub, files in (model_files or {}).items()}
        self.startup_timeout = startup_timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = ComfyClient(self.url, timeout=60)
        self.proc = None
        self.startup_seconds = None
        self._log = None

    # -- lifecycle -------------------------------------------------------------------
    def prepare_base_dir(self):
        for sub in ("custom_nodes", "models/checkpoints", "input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base_dir, sub), exist_ok=True)
        _symlink(REPO, os.path.join(self.base_dir, "custom_nodes", PACK_DIR_NAME))
        if self.checkpoint:
            _symlink(os.path.abspath(self.checkpoint),
                     os.path.join(self.base_dir, "models", "checkpoints", self.ckpt_name))
        for pack in self.extra_packs:
            _symlink(pack, os.path.join(self.base_dir, "custom_nodes", os.path.basename(pack)))
        for sub, files in self.model_files.items():
            os.makedirs(os.path.join(self.base_dir, "models", sub), exist_ok=True)
            for file in files:
                _symlink(file, os.path.join(self.base_dir, "models", sub, os.path.basename(file)))

    def command(self):
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base_dir, "--disable-api-nodes", "--dont-print-server",
               # the default database lives in <ComfyUI>/user/, which may be read-only or absent
               "--database-url", "sqlite:///" + os.path.join(self.base_dir, "user", "comfyui.db")]
        cmd += self.extra_args
        if self.isolate:  # nargs='+' flag: keep it last
            cmd += ["--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_DIR_NAME,
                    *(os.path.basename(p) for p in self.extra_packs)]
        return cmd

    def start(self):
        self.prepare_base_dir()
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        t0 = time.time()
        self.proc = subprocess.Popen(self.command(), cwd=self.comfyui_path, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        probe, last_answer = ComfyClient(self.url, timeout=10), None
        while True:
            self._raise_if_exited("during start-up")
            try:
                probe.object_info()  # answers once every node is loaded
                break
            except ComfyClientError as e:
                last_answer = e
            if time.time() - t0 > self.startup_timeout:
                self.stop()
                raise RuntimeError(f"ComfyUI did not answer /object_info within {self.startup_timeout}s "
                                   f"({last_answer}); log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.5)
        self.startup_seconds = time.time() - t0
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _raise_if_exited(self, when="while running a prompt"):
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} {when}; log {self.log_path}:\n"
                               f"{self.log_tail()}")

    # -- HTTP, through self.client ---------------------------------------------------
    def post_prompt(self, api_graph, client_id=None):
        """(status, body): 200 and the prompt id, or 400 and ComfyUI's validation errors."""
        return self.client.post_prompt(api_graph, client_id)

    def queue(self, api_graph, client_id=None):
        """The prompt id; AssertionError with ComfyUI's validation errors when it refuses the graph (tests)."""
        status, body = self.post_prompt(api_graph, client_id)
        if status != 200:
            raise AssertionError(f"/prompt returned {status}: error={json.dumps(body.get('error'))} "
                                 f"node_errors={json.dumps(body.get('node_errors'), indent=1)}")
        return body["prompt_id"]

    def interrupt(self):
        return self.client.interrupt()

    def history(self, prompt_id):
        return self.client.history(prompt_id)

    def wait(self, prompt_id, timeout=300):
        """The /history entry of a queued prompt once it has finished (poll; for prompts queued back-to-back)."""
        try:
            return self.client.wait(prompt_id, timeout, between_polls=self._raise_if_exited)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; log tail:\n{self.log_tail()}") from None
        except ServerLost:
            self._raise_if_exited()  # the likely reason, with the log
            raise

    def object_info(self, node_class=None):
        return self.client.object_info(node_class)

    def view(self, filename, subfolder="", type="output"):
        return self.client.view(filename, subfolder, type)

    def log_text(self):
        if self._log:
            self._log.flush()
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, n=60):
        return "\n".join(self.log_text().splitlines()[-n:])

    # -- run a prompt to completion -------------------------------------------------
    def run(self, api_graph, timeout=300, on_message=None):
        """Queue `api_graph` and follow it over the websocket until it finishes.

        The socket is opened before posting so no message of this prompt is missed. `on_message(msg)`,
        if given, sees each of this prompt's messages as it arrives (e.g. to POST /interrupt mid-run)."""
        import websocket  # websocket-client

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        messages, error, status = [], None, "success"
        try:
            prompt_id = self.queue(api_graph, client_id)
            deadline = time.time() + timeout
            while True:
                remaining = deadline - time.time()
                if remaining <= 0:
                    self.interrupt()
                    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s; log tail:\n{self.log_tail()}")
                ws.settimeout(remaining)
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                if isinstance(raw, bytes):  # binary preview frames: not needed here
                    continue
                msg = json.loads(raw)
                data = msg.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                messages.append(msg)
                if on_message is not None:
                    on_message(msg)
                kind = msg.get("type")
                if kind == "execution_error":
                    status, error = "error", data
                elif kind == "execution_interrupted":
                    status = "interrupted"
                elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        finally:
            ws.close()
        hist = self.history(prompt_id) or {}
        return {"prompt_id": prompt_id, "status": status, "messages": messages,
                "outputs": hist.get("outputs", {}), "error": error}


def reset_dir(path):
    """Remove `path` (symlinks inside are unlinked, never followed) and recreate it."""
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.makedirs(path)
