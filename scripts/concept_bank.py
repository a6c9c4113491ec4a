"""Concept bank: attribute a list of concepts on one or more running ComfyUI servers, one file per concept.

    python -m scripts.concept_bank concepts.txt --demo-model --server http://127.0.0.1:8188 --out bank_out
    python -m scripts.concept_bank concepts.txt --checkpoint sd15.safetensors --base "a photo" \\
        --server http://gpu1:8188 --server http://gpu2:8188 --out bank_out --steps 20 --save both

Each line of the concepts file is one concept, optionally with its own base prompt after a '|':
`a red circle | a red`. Lines without one use --base (default: the empty prompt). Empty lines and lines
starting with '#' are skipped (the command says how many).

ComfyUI's own queue does the work: every concept becomes one API prompt (model -> CLIP Text Encode ->
CAD Attribute [-> CAD Erase Mask] -> Save CAD Attribution / Save CAD Mask), POSTed to /prompt and followed on
/history/<id>. Each server has at most one of our prompts in flight; a free server takes the next concept.
The Save nodes write models/cad/<prefix>/<slug>_NNNNN_.safetensors on that server (atomically, never over
an existing file). The command keeps OUT/index.json and OUT/index.csv, rewritten atomically after every
concept, so it can be killed and re-run: concepts the index marks done, whose files a server still lists, are
skipped. A server that stops answering loses its concept to another server; if every server is gone the
command stops (exit 3) with the index ready for a re-run. A --server URL where some other web server answers
(an HTML page, JSON that is not ComfyUI's) is left out with a line on stderr, and the others carry on.

Exit codes: 0 every concept done; 1 some concepts failed (the index holds the servers' messages);
2 bad input, or no --server is a ComfyUI server (nothing was submitted); 3 every server was lost;
130 interrupted (Ctrl-C).

Only the standard library is needed (tqdm, if installed, draws the progress bar).
"""
import argparse
import csv
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from hashlib import sha1

from scripts.comfy_client import ComfyClient, ComfyClientError, NotComfyUI, ServerLost

INDEX_FORMAT = 1
TEMP_PREFIX = ".tmp-"  # the index's temporary files: OUT/.tmp-XXXX-index.json
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ALL_SERVERS_LOST, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SAVE_CHOICES = {"attribution": ("attribution",), "mask": ("mask",), "both": ("attribution", "mask")}
POLL_SECONDS = 0.25
# Node ids of the prompt built for each concept (build_graph); the index reads their outputs.
MODEL, CONCEPT, BASE, LATENT, ATTRIBUTE, MASK, SAVE_ATTRIBUTION, SAVE_MASK = "1", "2", "3", "4", "5", "6", "7", "8"
SAVE_NODE = {"attribution": SAVE_ATTRIBUTION, "mask": SAVE_MASK}


class BankInputError(Exception):
    """Bad input found before any work: the message says what was wrong, what was expected and how to fix it."""


# --- the concepts file ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Concept:
    line: int
    text: str
    base: str

    @property
    def key(self) -> str:
        """What the index knows the concept by: its text and its base."""
        return f"{self.text} | {self.base}"


@dataclass
class ConceptList:
    concepts: list
    skipped_lines: list  # line numbers of empty and '#' lines


def read_concepts(path: str, default_base: str) -> ConceptList:
    """The concepts of a text file (UTF-8), or BankInputError saying what is wrong with it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BankInputError(f"Cannot read the concepts file {path!r}: {e.strerror}. Give the path of a text file "
                             f"with one concept per line.") from None
    return parse_concepts(raw, default_base, name=path)


def parse_concepts(raw: bytes, default_base: str, name: str = "the concepts file") -> ConceptList:
    if b"\0" in raw:
        raise BankInputError(f"{name} is not a text file (it contains NUL bytes, e.g. an image or a model file). "
                             f"Give a UTF-8 text file with one concept per line, e.g. 'a red circle'.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BankInputError(f"{name} is not UTF-8 text (undecodable byte 0x{raw[e.start]:02x} on line {line}). "
                             f"Save it as UTF-8 text with one concept per line.") from None
    concepts, skipped, problems = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            skipped.append(number)
            continue
        concept, separator, base = stripped.partition("|")
        concept, base = concept.strip(), (base.strip() if separator else default_base)
        if not concept:
            problems.append(f"line {number}: no concept before '|' ({stripped!r}); write 'concept | base'.")
            continue
        if "|" in base:
            problems.append(f"line {number}: more than one '|' ({stripped!r}); write 'concept | base'.")
            continue
        concepts.append(Concept(number, concept, base))
    problems += _duplicate_problems(concepts)
    if problems:
        raise BankInputError(f"{name} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if not concepts:
        raise BankInputError(f"{name} holds no concepts (only empty or '#' lines). Write one concept per line, "
                             f"e.g. 'a red circle', optionally with its base: 'a red circle | a red'.")
    return ConceptList(concepts, skipped)


def _duplicate_problems(concepts) -> list:
    lines = {}
    for c in concepts:
        lines.setdefault(c.key, []).append(c.line)
    return [f"'{key}' appears on lines {', '.join(map(str, numbers))}: each concept (with its base) must appear "
            f"once; delete the repeats." for key, numbers in lines.items() if len(numbers) > 1]


def slugs_for(concepts) -> dict:
    """A file-name-safe, unique slug per concept key ('a red circle' -> 'a_red_circle'); concepts whose slugs
    would collide (different base, punctuation) get a short hash of their key appended."""
    plain = {c.key: (re.sub(r"[^a-z0-9]+", "_", c.text.lower()).strip("_")[:60] or "concept") for c in concepts}
    counts = {}
    for slug in plain.values():
        counts[slug] = counts.get(slug, 0) + 1
    return {key: slug if counts[slug] == 1 else f"{slug}_{sha1(key.encode()).hexdigest()[:8]}"
            for key, slug in plain.items()}


# --- settings and the prompt per concept -------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    checkpoint: str | None  # None: the pack's CAD Demo Model
    objective: str
    scope: str
    scope_regex: str
    steps: int
    samples: int
    guidance: float
    seed: int
    width: int
    height: int
    ratio: float
    granularity: str
    save: tuple
    prefix: str

    def as_dict(self) -> dict:
        return {name: (list(value) if isinstance(value, tuple) else value) for name, value in self.__dict__.items()}


def build_graph(concept: Concept, slug: str, s: Settings) -> dict:
    """The API prompt for one concept: attribution, optional erase mask, and the Save nodes."""
    graph = {}

    def add(nid, class_type, **inputs):
        graph[nid] = {"class_type": class_type, "inputs": inputs}
        return [nid, 0]

    if s.checkpoint is None:
        add(MODEL, "CADDemoModel")
    else:
        add(MODEL, "CheckpointLoaderSimple", ckpt_name=s.checkpoint)
    clip = [MODEL, 1]
    positive = add(CONCEPT, "CLIPTextEncode", text=concept.text, clip=clip)
    base = add(BASE, "CLIPTextEncode", text=concept.base, clip=clip)
    latent = add(LATENT, "EmptyLatentImage", width=s.width, height=s.height, batch_size=1)
    attribution = add(ATTRIBUTE, "CADAttribute", model=[MODEL, 0], positive=positive, base=base, latent=latent,
                      objective=s.objective, steps=s.steps, guidance=s.guidance, seed=s.seed, samples=s.samples,
                      scope=s.scope, schedule="single", scope_regex=s.scope_regex)
    prefix = f"{s.prefix}/{slug}"
    if "attribution" in s.save:
        add(SAVE_ATTRIBUTION, "CADSaveAttribution", attribution=attribution, filename_prefix=prefix)
    if "mask" in s.save:
        mask = add(MASK, "CADEraseMask", attribution=attribution, ratio=s.ratio, granularity=s.granularity)
        add(SAVE_MASK, "CADSaveMask", mask=mask, filename_prefix=f"{prefix}_erase")
    return graph


@dataclass
class Outcome:
    """What a finished prompt gave: ok with the Save nodes' files and the summaries, or an error message."""
    ok: bool
    error: str = ""
    files: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    mask: dict = field(default_factory=dict)
    run_seconds: float | None = None  # from the server's execution_start to its last message


def _run_seconds(messages) -> float | None:
    stamps = {kind: data.get("timestamp") for kind, data in messages if isinstance(data, dict)}
    start = stamps.get("execution_start")
    end = stamps.get("execution_success") or stamps.get("execution_error") or stamps.get("execution_interrupted")
    return math.floor(end - start) / 1000 if isinstance(start, (int, float)) and isinstance(end, (int, float)) else None


def read_outcome(entry: dict, settings: Settings) -> Outcome | None:
    """None while the prompt has not finished; otherwise its Outcome from the /history entry."""
    status = entry.get("status") or {}
    if status.get("completed") is None and status.get("status_str") is None:
        return None
    messages = status.get("messages") or []
    outputs = entry.get("outputs") or {}
    # A prompt that fails after one Save node ran still leaves that file: the index names it either way.
    files = {what: saved[0]["file"] for what in settings.save
             if (saved := (outputs.get(SAVE_NODE[what]) or {}).get("cad_saved"))}
    for kind, data in messages:
        if kind == "execution_error":
            return Outcome(False, f"{data.get('node_type', '?')} (node {data.get('node_id', '?')}): "
                                  f"{data.get('exception_message', '').strip()}", files=files)
        if kind == "execution_interrupted":
            return Outcome(False, "interrupted on the server (someone pressed Cancel or POSTed /interrupt)",
                           files=files)
    if status.get("status_str") == "removed":
        return Outcome(False, "the prompt left the server's queue without running (deleted from the queue, or "
                              "the queue was cleared)")
    if status.get("status_str") not in (None, "success"):
        return Outcome(False, f"the server reports status {status.get('status_str')!r}", files=files)
    cached = {node for kind, data in messages if kind == "execution_cached" for node in data.get("nodes", [])}
    for what in settings.save:
        node = SAVE_NODE[what]
        if node in cached:
            return Outcome(False, "the server answered from its cache, so it wrote no new file (an identical "
                                  "prompt ran there before); restart that server to clear its cache and re-run")
        if what not in files:
            return Outcome(False, f"Save CAD {what} (node {node}) reported no file", files=files)
    summary = ((outputs.get(ATTRIBUTE) or {}).get("cad_summary") or [{}])[0]
    mask = ((outputs.get(MASK) or {}).get("cad_mask") or [{}])[0]
    return Outcome(True, files=files, summary=summary, mask=mask, run_seconds=_run_seconds(messages))


# --- the index ---------------------------------------------------------------------------------------------
CSV_FIXED = ["line", "concept", "base", "status", "server", "seconds", "wall_seconds", "attribution_file", "mask_file",
             "weights", "masked", "positive_mass", "negative_mass", "error"]


class Index:
    """OUT/index.json (the record) and OUT/index.csv (the same as a table), both replaced atomically."""

    def __init__(self, out_dir: str, settings: Settings, concepts, slugs):
        self.out_dir = out_dir
        self.json_path = os.path.join(out_dir, "index.json")
        self.csv_path = os.path.join(out_dir, "index.csv")
        self.settings = settings
        self.entries = {c.key: {"line": c.line, "concept": c.text, "base": c.base, "slug": slugs[c.key],
                                "status": "pending"} for c in concepts}

    def remove_stale_temporaries(self) -> None:
        """A run killed while replacing the index leaves its temporary file (never the index half-written):
        the next run removes it."""
        for name in os.listdir(self.out_dir):
            if name.startswith(TEMP_PREFIX) and name.endswith(("-index.json", "-index.csv")):
                os.remove(os.path.join(self.out_dir, name))

    def load_previous(self) -> None:
        """Take over the done and submitted entries of an earlier run in the same folder (same settings)."""
        if not os.path.exists(self.json_path):
            return
        try:
            with open(self.json_path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError) as e:
            raise BankInputError(f"{self.json_path} exists but cannot be read as an index ({e}). Move it away to "
                                 f"start afresh, or choose another --out.") from None
        if previous.get("settings") != self.settings.as_dict():
            changed = sorted(k for k in set(previous.get("settings") or {}) | set(self.settings.as_dict())
                             if (previous.get("settings") or {}).get(k) != self.settings.as_dict().get(k))
            raise BankInputError(f"{self.json_path} was made with other settings ({', '.join(changed)} differ), so "
                                 f"its files are not what this run would make. Re-run with the same settings to "
                                 f"resume, or choose another --out.")
        for entry in previous.get("concepts", []):
            key = f"{entry.get('concept')} | {entry.get('base')}"
            if key in self.entries and entry.get("status") in ("done", "submitted"):
                self.entries[key] = {**entry, "line": self.entries[key]["line"]}

    def done_keys(self) -> set:
        return self.keys_with("done")

    def keys_with(self, status: str) -> set:
        return {key for key, e in self.entries.items() if e["status"] == status}

    def forget(self, key: str, why: str) -> None:
        entry = self.entries[key]
        self.entries[key] = {k: entry[k] for k in ("line", "concept", "base", "slug")} | {"status": "pending",
                                                                                           "note": why}

    def record(self, key: str, **fields) -> None:
        entry = self.entries[key]
        self.entries[key] = {k: entry[k] for k in ("line", "concept", "base", "slug")} | fields
        self.write()

    def write(self) -> None:
        rows = sorted(self.entries.values(), key=lambda e: e["line"])
        document = {"format": INDEX_FORMAT, "settings": self.settings.as_dict(), "concepts": rows}
        _replace_atomically(self.json_path, json.dumps(document, indent=1, ensure_ascii=False) + "\n")
        _replace_atomically(self.csv_path, _csv_text(rows))


def _csv_text(rows) -> str:
    blocks = []
    for row in rows:
        for block in row.get("blocks") or []:
            if block["block"] not in blocks:
                blocks.append(block["block"])
    header = CSV_FIXED + [f"{sign}_mass:{b}" for b in blocks for sign in ("positive", "negative")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        files = row.get("files") or {}
        per_block = {b["block"]: b for b in row.get("blocks") or []}
        writer.writerow([row["line"], row["concept"], row["base"], row["status"], row.get("server", ""),
                         row.get("seconds", ""), row.get("wall_seconds", ""), files.get("attribution", ""),
                         files.get("mask", ""),
                         row.get("weights", ""), row.get("masked", ""), row.get("positive_mass", ""),
                         row.get("negative_mass", ""), row.get("error", "")]
                        + [per_block.get(b, {}).get(f"{sign}_mass", "") for b in blocks
                           for sign in ("positive", "negative")])
    return buffer.getvalue()


def _replace_atomically(path: str, text: str) -> None:
    """Write a temporary file beside `path`, flush it to disk, then rename it over `path`: a reader (or a kill)
    sees the old file or the new one, never half of one."""
    handle, temp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=TEMP_PREFIX,
                                    suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


# --- checks before any work --------------------------------------------------------------------------------
def usable_servers(servers, settings: Settings) -> list:
    """The servers to run on. A URL where some other web server answers (an HTML page, JSON that is not ComfyUI's)
    is left out with one line on stderr, so one wrong URL in a long list does not lose the run. A ComfyUI that
    cannot do the work (unreachable, no pack, no checkpoint) stops the command before anything is submitted, as
    does a list where no ComfyUI is left."""
    usable, problems = [], []
    for server in servers:
        try:
            problems += _server_problems(server, settings)
        except NotComfyUI as e:
            warn(f"{e} It is left out of this run.")
            continue
        except ServerLost as e:
            problems.append(f"{e}: unreachable. Start ComfyUI there, or fix the --server URL "
                            f"(e.g. http://127.0.0.1:8188).")
        usable.append(server)
    if problems:
        raise BankInputError("Server check failed, nothing was submitted:\n  " + "\n  ".join(problems))
    if not usable:
        raise BankInputError("No --server is a ComfyUI server (each one was left out, see above); nothing was "
                             "submitted. Give the URL of a running ComfyUI with the pack, e.g. http://127.0.0.1:8188.")
    return usable


def _server_problems(server: ComfyClient, settings: Settings) -> list:
    server.system_stats()  # NotComfyUI unless ComfyUI answers there
    attribute = server.object_info("CADAttribute").get("CADAttribute")
    if not attribute:
        return [f"{server.url}: the comfyui-cad pack is not installed there (no CADAttribute in /object_info). "
                f"Put it in that ComfyUI's custom_nodes/ and restart it (README, 'Install into ComfyUI')."]
    problems = []
    required = attribute.get("input", {}).get("required", {})
    for name, value in (("objective", settings.objective), ("scope", settings.scope)):
        options = combo_options(required.get(name))
        if options and value not in options:
            problems.append(f"{server.url}: {name} {value!r} is not one this pack offers: {', '.join(options)}.")
    if settings.checkpoint is not None:
        loader = server.object_info("CheckpointLoaderSimple").get("CheckpointLoaderSimple") or {}
        available = combo_options(loader.get("input", {}).get("required", {}).get("ckpt_name"))
        if settings.checkpoint not in available:
            listed = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "") if available else "none"
            problems.append(f"{server.url}: checkpoint {settings.checkpoint!r} is not in its models/checkpoints/ "
                            f"(it has: {listed}). Copy it there, or pass one of those names to --checkpoint, or "
                            f"use --demo-model.")
    return problems


def combo_options(spec) -> list:
    """A combo input's choices in /object_info, in either form ComfyUI uses: [[a, b], {...}] or
    ["COMBO", {"options": [a, b]}]."""
    if not isinstance(spec, list) or not spec:
        return []
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options", []))
    return []


def drop_done_without_files(index: Index, servers) -> None:
    """A done entry whose files no server lists any more is done again (a file was deleted or moved)."""
    done = index.done_keys()
    if not done:
        return
    listed = set()
    for server in servers:
        listed |= server.listed_files("cad")
    for key in done:
        files = index.entries[key].get("files") or {}
        missing = [f for f in files.values() if f not in listed]
        if missing:
            index.forget(key, f"redone: {', '.join(missing)} no longer listed by any server")


def adopt_submitted(index: Index, servers, concepts) -> dict:
    """Prompts an earlier, interrupted run left on a server (index status 'submitted') are followed again rather
    than submitted twice, if that server is in this run and still has them queued or in its history:
    {server url: InFlight}. The others go back to pending."""
    by_url, by_key = {s.url: s for s in servers}, {c.key: c for c in concepts}
    adopted = {}
    for key in sorted(index.keys_with("submitted"), key=lambda k: index.entries[k]["line"]):
        entry = index.entries[key]
        server, prompt_id = by_url.get(entry.get("server")), entry.get("prompt_id")
        known = False
        if server is not None and prompt_id and server.url not in adopted:
            try:
                known = prompt_id in server.queued_ids() or server.history(prompt_id) is not None
            except ComfyClientError:
                known = False
        if known:
            adopted[server.url] = InFlight(by_key[key], prompt_id, entry.get("submitted_at") or time.time())
        else:
            index.forget(key, "submitted by an earlier run whose prompt no server of this run has: submitted again")
    return adopted


# --- the run -----------------------------------------------------------------------------------------------
@dataclass
class InFlight:
    concept: Concept
    prompt_id: str
    started: float


class Progress:
    """tqdm's bar when it is installed, else one stderr line per finished concept; both with an ETA."""

    def __init__(self, total: int, already_done: int):
        self.total, self.finished, self.failed = total, 0, 0
        self.started = time.time()
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="concept", desc="concept bank", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self.bar = None
        if already_done:
            self.note(f"{already_done} concept(s) already done in the index: skipped")

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def advance(self, failed: bool) -> None:
        self.finished += 1
        self.failed += failed
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed)
            self.bar.update(1)
            return
        elapsed = time.time() - self.started
        eta = elapsed / self.finished * (self.total - self.finished)
        print(f"concept bank: {self.finished}/{self.total} done, {self.failed} failed, {elapsed:.0f} s elapsed, "
              f"ETA {eta:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Bank:
    """Hands the pending concepts to the servers, one in flight per server, and records every outcome."""

    def __init__(self, servers, settings: Settings, index: Index, todo, slugs, progress: Progress, adopted=None):
        self.live = list(servers)
        self.settings, self.index, self.slugs, self.progress = settings, index, slugs, progress
        self.pending = deque(todo)
        self.in_flight = dict(adopted or {})  # server url -> InFlight
        self.failed = 0

    def run(self) -> int:
        while self.pending or self.in_flight:
            if not self.live:
                return self._all_servers_lost()
            for server in list(self.live):
                if server.url not in self.in_flight and self.pending:
                    self._submit(server, self.pending.popleft())
            for server in list(self.live):
                if server.url in self.in_flight:
                    self._check(server)
            time.sleep(POLL_SECONDS)
        return EXIT_FAILED if self.failed else EXIT_OK

    def _submit(self, server: ComfyClient, concept: Concept) -> None:
        # before the request: the server may start the prompt before its answer reaches us, and wall_seconds
        # must hold the server's whole run
        submitted = time.time()
        try:
            state, detail = server.submit(build_graph(concept, self.slugs[concept.key], self.settings))
        except ComfyClientError as e:
            self.pending.appendleft(concept)
            self._lose(server, e)
            return
        if state == "queued":
            self.in_flight[server.url] = InFlight(concept, detail, submitted)
            # recorded before it finishes, so a re-run after a kill follows this prompt instead of repeating it
            self.index.record(concept.key, status="submitted", server=server.url, prompt_id=detail,
                              submitted_at=round(submitted, 3))
        else:
            self._finish(server, InFlight(concept, "", submitted), Outcome(False, f"refused: {detail}"))

    def _check(self, server: ComfyClient) -> None:
        flight = self.in_flight[server.url]
        try:
            entry = server.history(flight.prompt_id)
            if entry is None and flight.prompt_id not in server.queued_ids():
                entry = server.history(flight.prompt_id)  # it may have finished between the two requests
                if entry is None:
                    entry = {"status": {"status_str": "removed", "messages": []}}
        except ComfyClientError as e:
            self._lose(server, e)
            return
        outcome = read_outcome(entry, self.settings) if entry else None
        if outcome is not None:
            del self.in_flight[server.url]
            self._finish(server, flight, outcome)

    def _lose(self, server: ComfyClient, why: ComfyClientError) -> None:
        """The server is gone, or no longer answers like ComfyUI: its concept goes back to the front of the queue
        for the servers still live."""
        self.live.remove(server)
        flight = self.in_flight.pop(server.url, None)
        if flight is not None:
            self.pending.appendleft(flight.concept)
            self.index.forget(flight.concept.key, f"its server {server.url} was lost while it ran")
            self.index.write()
        moved = f"; '{flight.concept.text}' goes to another server" if flight else ""
        self.progress.note(f"server lost: {why}{moved} ({len(self.live)} server(s) left)")

    def _finish(self, server: ComfyClient, flight: InFlight, outcome: Outcome) -> None:
        # seconds: the server's own run time of the prompt where its messages carry one; wall_seconds: from
        # submission until the command saw it finish (queue waits and polling included)
        wall_seconds = math.ceil((time.time() - flight.started) * 1000) / 1000  # rounded up: never below seconds
        base = {"server": server.url, "prompt_id": flight.prompt_id, "wall_seconds": wall_seconds,
                "seconds": outcome.run_seconds if outcome.run_seconds is not None else wall_seconds}
        if outcome.ok:
            summary = outcome.summary
            self.index.record(flight.concept.key, status="done", files=outcome.files, **base,
                              weights=summary.get("weights"), masked=outcome.mask.get("selected"),
                              positive_mass=summary.get("positive_mass"), negative_mass=summary.get("negative_mass"),
                              blocks=[{k: b[k] for k in ("block", "positive_mass", "negative_mass", "weights")}
                                      for b in summary.get("blocks", [])])
        else:
            self.failed += 1
            self.index.record(flight.concept.key, status="failed", error=outcome.error, files=outcome.files, **base)
            self.progress.note(f"failed: '{flight.concept.text}' on {server.url}: {outcome.error}")
        self.progress.advance(failed=not outcome.ok)

    def _all_servers_lost(self) -> int:
        self.index.write()
        left = len(self.pending)
        self.progress.note(f"Every server was lost; {left} concept(s) not done. The index in {self.index.out_dir} "
                           f"is up to date: start a server and re-run the same command to do the rest.")
        return EXIT_ALL_SERVERS_LOST


# --- command line ------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Attribute every concept of a text file on running ComfyUI servers (comfyui-cad), one "
                    "attribution and/or erase mask file per concept in the servers' models/cad/, and an index "
                    "(index.json, index.csv) in --out. Re-running with the same --out resumes.",
        epilog="Concepts file: UTF-8 text, one concept per line, optionally 'concept | base'; empty lines and "
               "lines starting with '#' are skipped. Exit codes: 0 all done, 1 some failed, 2 bad input, "
               "3 every server lost.")
    p.add_argument("concepts", help="text file, one concept per line ('a red circle' or 'a red circle | a red')")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="checkpoint name as Load Checkpoint lists it on every server")
    model.add_argument("--demo-model", action="store_true", help="the pack's CAD Demo Model (no download)")
    p.add_argument("--server", action="append", required=True, metavar="URL",
                   help="a running ComfyUI with the pack, e.g. http://127.0.0.1:8188 (repeat for more servers)")
    p.add_argument("--out", required=True, help="folder for index.json and index.csv (created; reused to resume)")
    p.add_argument("--base", default="", help="base prompt of lines without '| base' (default: the empty prompt)")
    p.add_argument("--objective", default="concept_gap")
    p.add_argument("--scope", default="ff")
    p.add_argument("--scope-regex", default="", help="with --scope regex: the pattern over weight names")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None,
                   help="latent width and height in pixels (default 64 for the demo model, 512 otherwise)")
    p.add_argument("--ratio", type=float, default=None,
                   help="erase mask ratio (CAD Erase Mask; default 0.05 for the demo model, whose rows are too narrow "
                        "for less with per_row, 0.001 otherwise, the node's default)")
    p.add_argument("--granularity", default="per_row", choices=("per_row", "per_matrix", "global"))
    p.add_argument("--save", default="both", choices=tuple(SAVE_CHOICES),
                   help="what to write per concept: the attribution, the erase mask, or both (default)")
    p.add_argument("--prefix", default="bank",
                   help="subfolder of models/cad/ for the files: <prefix>/<concept slug>_NNNNN_.safetensors")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a server may take to answer one request")
    return p.parse_args(argv)


def settings_from(args) -> Settings:
    size = args.size or (64 if args.demo_model else 512)
    ratio = args.ratio if args.ratio is not None else (0.05 if args.demo_model else 0.001)
    problems = _unusable_numbers(args)
    if args.steps < 1 or args.samples < 1:
        problems.append("--steps and --samples must be at least 1.")
    if math.isfinite(ratio) and not 0 < ratio <= 1:
        problems.append(f"--ratio must be in (0, 1], got {ratio} (0.001 selects 0.1% of the weights).")
    if size < 8 or size % 8:
        problems.append(f"--size must be a positive multiple of 8, got {size}.")
    if args.scope == "regex" and not args.scope_regex:
        problems.append("--scope regex needs --scope-regex PATTERN.")
    if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", args.prefix.strip("/")):
        problems.append(f"--prefix {args.prefix!r} must be a relative folder name inside models/cad/ made of "
                        f"letters, digits, '_', '-' and '/', e.g. 'bank' or 'bank/sd15'.")
    if problems:
        raise BankInputError("Bad settings:\n  " + "\n  ".join(problems))
    return Settings(checkpoint=None if args.demo_model else args.checkpoint, objective=args.objective,
                    scope=args.scope, scope_regex=args.scope_regex, steps=args.steps, samples=args.samples,
                    guidance=args.guidance, seed=args.seed, width=size, height=size, ratio=ratio,
                    granularity=args.granularity, save=SAVE_CHOICES[args.save], prefix=args.prefix.strip("/"))


def _unusable_numbers(args) -> list:
    """argparse's float() takes 'nan' and 'inf': every float option (those of today and any added later) must be a
    finite number, and --timeout a positive one."""
    problems = [f"--{name.replace('_', '-')} must be a finite number, got {value}."
                for name, value in vars(args).items() if isinstance(value, float) and not math.isfinite(value)]
    if math.isfinite(args.timeout) and args.timeout <= 0:
        problems.append(f"--timeout must be a positive number of seconds, got {args.timeout}.")
    return problems


def clients_for(urls, timeout: float) -> list:
    """One client per --server URL, or BankInputError naming the URLs given twice or not http(s)."""
    urls = [u.rstrip("/") for u in urls]
    repeated = sorted({u for u in urls if urls.count(u) > 1})
    if repeated:
        raise BankInputError(f"--server {', '.join(repeated)} is given more than once; give each server once.")
    clients, problems = [], []
    for url in urls:
        try:
            clients.append(ComfyClient(url, timeout))
        except ValueError as e:
            problems.append(f"--server {e}.")
    if problems:
        raise BankInputError("Bad --server URL(s):\n  " + "\n  ".join(problems))
    return clients


def open_index(out: str, settings: Settings, concepts, slugs) -> Index:
    """The index in --out (created), with what an earlier run there did."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise BankInputError(f"--out {out!r} cannot be used as a folder ({e.strerror}). Give a folder path "
                             f"(it is created if missing).") from None
    index = Index(out, settings, concepts, slugs)
    index.remove_stale_temporaries()
    index.load_previous()
    return index


@dataclass
class Plan:
    """What a run works from, all checked before any work."""
    servers: list
    settings: Settings
    index: Index
    todo: list  # concepts to submit
    adopted: dict  # prompts of an earlier run to follow: {server url: InFlight}
    slugs: dict
    skipped_lines: list


def prepare(args) -> Plan:
    """The settings, the concepts and the servers are checked in that order (bad settings reach no server); then
    the index in --out is opened and what an earlier run did there is taken over."""
    settings = settings_from(args)
    concept_list = read_concepts(args.concepts, args.base)
    servers = usable_servers(clients_for(args.server, args.timeout), settings)
    slugs = slugs_for(concept_list.concepts)
    index = open_index(args.out, settings, concept_list.concepts, slugs)
    drop_done_without_files(index, servers)
    adopted = adopt_submitted(index, servers, concept_list.concepts)
    started = index.done_keys() | {flight.concept.key for flight in adopted.values()}
    todo = [c for c in concept_list.concepts if c.key not in started]
    return Plan(servers, settings, index, todo, adopted, slugs, concept_list.skipped_lines)


def warn(text: str) -> None:
    print(f"concept bank: {text}", file=sys.stderr, flush=True)


def run_plan(plan: Plan) -> int:
    """Run the bank; Ctrl-C leaves the submitted prompts running and the index ready for a re-run."""
    progress = Progress(len(plan.todo) + len(plan.adopted), len(plan.index.done_keys()))
    if plan.adopted:
        progress.note(f"following {len(plan.adopted)} prompt(s) an earlier run left on its server(s)")
    try:
        code = Bank(plan.servers, plan.settings, plan.index, plan.todo, plan.slugs, progress, plan.adopted).run()
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    progress.close()
    if code == EXIT_INTERRUPTED:
        warn(f"interrupted. Prompts already submitted keep running on their servers; re-run the same command to "
             f"collect them and do the rest (index: {plan.index.json_path}).")
    return code


def summary_line(index: Index) -> str:
    statuses = [e["status"] for e in index.entries.values()]
    done, failed = statuses.count("done"), statuses.count("failed")
    return f"{done} done, {failed} failed, {len(statuses) - done - failed} not done; index: {index.json_path}"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        plan = prepare(args)
    except BankInputError as e:
        warn(str(e))
        return EXIT_BAD_INPUT
    except ComfyClientError as e:  # answered the checks, then went away before the run began
        warn(f"{e}. Nothing was submitted; re-run once the server answers.")
        return EXIT_BAD_INPUT
    skipped = plan.skipped_lines
    if skipped:
        warn(f"skipped {len(skipped)} empty or '#' line(s): {', '.join(map(str, skipped[:20]))}"
             f"{' ...' if len(skipped) > 20 else ''}")
    plan.index.write()
    code = run_plan(plan)
    if code != EXIT_INTERRUPTED:
        warn(summary_line(plan.index))
    return code


if __name__ == "__main__":
    sys.exit(main())
