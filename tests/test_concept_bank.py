"""scripts/concept_bank.py: parsing, the index and the scheduling on fake servers (fast), then the command
itself against real ComfyUI servers on the CAD Demo Model: two servers, resume, a failing concept, a server
killed mid-run, every server lost, and bad input refused before anything is submitted."""
import csv
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, running_server
from fake_comfyui import ComfyUIWithoutThePack, HtmlPage, JsonOfAnotherApi, ServerError, fake_comfyui, serving

from scripts import concept_bank as bank

BANK = ["-m", "scripts.concept_bank"]  # run from the repo root (cwd=REPO)
SHAPES = ["a circle", "a square", "a triangle", "a cross"]
COLOURED = ["a red circle | a red", "a blue square | a blue"]
QUICK = ["--steps", "3", "--samples", "1", "--ratio", "0.05"]


# --- the concepts file ----------------------------------------------------------------------------------
def test_concepts_file_lines_bases_and_skipped_lines():
    parsed = bank.parse_concepts(b"a circle\n\n# a note\n  a red square | a red  \r\nx|\n", default_base="a photo")
    assert [(c.line, c.text, c.base) for c in parsed.concepts] == [
        (1, "a circle", "a photo"), (4, "a red square", "a red"), (5, "x", "")]
    assert parsed.skipped_lines == [2, 3]


def test_duplicate_concepts_are_listed_with_their_line_numbers():
    with pytest.raises(bank.BankInputError) as e:
        bank.parse_concepts(b"a circle\na square\n a circle\na circle | a red\na square\n", default_base="")
    message = str(e.value)
    assert "'a circle | ' appears on lines 1, 3" in message and "'a square | ' appears on lines 2, 5" in message
    assert "a red" not in message  # another base is another concept


@pytest.mark.parametrize("raw,phrase", [
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "not a text file (it contains NUL bytes"),
    (b"a circle\na squ\xe9re\n", "not UTF-8 text (undecodable byte 0xe9 on line 2)"),
    (b"\n# only a note\n", "holds no concepts"),
    (b"| a red\n", "line 1: no concept before '|'"),
    (b"a | b | c\n", "line 1: more than one '|'"),
])
def test_unusable_concepts_files_say_what_is_wrong(raw, phrase):
    with pytest.raises(bank.BankInputError) as e:
        bank.parse_concepts(raw, default_base="")
    assert phrase in str(e.value)


def test_slugs_are_file_names_and_unique():
    concepts = bank.parse_concepts("a red circle\na red circle | a red\nA Red-Circle!\nça\n".encode(), "").concepts
    slugs = bank.slugs_for(concepts)
    assert len(set(slugs.values())) == 4
    assert all(s.startswith("a_red_circle_") for s in list(slugs.values())[:3])  # collisions get a hash
    assert slugs["ça | "] == "a"


def test_combo_options_in_both_object_info_forms():
    assert bank.combo_options([["a.safetensors", "b.ckpt"], {}]) == ["a.safetensors", "b.ckpt"]
    assert bank.combo_options(["COMBO", {"options": ["ff", "attention"]}]) == ["ff", "attention"]
    assert bank.combo_options(None) == []


def test_bad_settings_are_all_listed_before_the_concepts_or_servers_are_read(tmp_path, capsys):
    code = bank.main([str(tmp_path / "absent.txt"), "--demo-model", "--server", "http://127.0.0.1:1",
                      "--out", str(tmp_path / "out"), "--steps", "0", "--ratio", "1.5", "--size", "60",
                      "--prefix", "../escape"])
    assert code == bank.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    for phrase in ("--steps and --samples must be at least 1", "--ratio must be in (0, 1], got 1.5",
                   "--size must be a positive multiple of 8, got 60", "--prefix '../escape' must be a relative"):
        assert phrase in err, phrase
    assert not (tmp_path / "out").exists()


# --- outcomes and the index ------------------------------------------------------------------------------
def settings(**changes):
    values = dict(checkpoint=None, objective="concept_gap", scope="ff", scope_regex="", steps=3, samples=1,
                  guidance=3.0, seed=0, width=64, height=64, ratio=0.05, granularity="per_row",
                  save=("attribution", "mask"), prefix="bank")
    return bank.Settings(**{**values, **changes})


def history_entry(status_str="success", messages=(),
                  saved=("bank/a_00001_.safetensors", "bank/a_erase_00001_.safetensors")):
    outputs = {bank.ATTRIBUTE: {"cad_summary": [{"weights": 10, "positive_mass": 2.0, "negative_mass": -1.0,
                                                 "blocks": [{"block": "in", "label": "in", "positive_mass": 2.0,
                                                             "negative_mass": -1.0, "weights": 10}]}]},
               bank.MASK: {"cad_mask": [{"selected": 3}]}}
    for node, file in zip((bank.SAVE_ATTRIBUTION, bank.SAVE_MASK), saved):
        outputs[node] = {"cad_saved": [{"file": file}]}
    return {"status": {"status_str": status_str, "completed": status_str == "success",
                       "messages": [list(m) for m in messages]}, "outputs": outputs}


def test_outcome_of_a_finished_prompt():
    timing = [("execution_start", {"timestamp": 1000}), ("execution_success", {"timestamp": 3500})]
    outcome = bank.read_outcome(history_entry(messages=timing), settings())
    assert outcome.run_seconds == 2.5
    assert outcome.ok and outcome.files == {"attribution": "bank/a_00001_.safetensors",
                                            "mask": "bank/a_erase_00001_.safetensors"}
    assert outcome.summary["weights"] == 10 and outcome.mask["selected"] == 3
    assert bank.read_outcome({"status": {}, "outputs": {}}, settings()) is None  # still running


def test_outcome_of_an_error_names_the_node_and_keeps_written_files():
    error = ("execution_error", {"node_id": "6", "node_type": "CADEraseMask",
                                 "exception_message": "selects no weights"})
    outcome = bank.read_outcome(history_entry("error", [error], saved=("bank/a_00001_.safetensors",)), settings())
    assert not outcome.ok and outcome.error == "CADEraseMask (node 6): selects no weights"
    assert outcome.files == {"attribution": "bank/a_00001_.safetensors"}


def test_outcome_served_from_the_cache_is_a_failure():
    cached = ("execution_cached", {"nodes": ["1", bank.SAVE_ATTRIBUTION]})
    outcome = bank.read_outcome(history_entry(messages=[cached]), settings())
    assert not outcome.ok and "from its cache" in outcome.error


def make_index(tmp_path, concepts_text=b"a circle\na square\n", **changes):
    concepts = bank.parse_concepts(concepts_text, "").concepts
    return bank.Index(str(tmp_path), settings(**changes), concepts, bank.slugs_for(concepts)), concepts


def test_index_is_replaced_atomically_and_resumes_done_entries(tmp_path, monkeypatch):
    index, concepts = make_index(tmp_path)
    index.record(concepts[0].key, status="done", files={"attribution": "bank/a_circle_00001_.safetensors"},
                 server="s1", seconds=1.0, weights=10, masked=3, positive_mass=2.0, negative_mass=-1.0,
                 blocks=[{"block": "in", "positive_mass": 2.0, "negative_mass": -1.0, "weights": 10}])
    index.record(concepts[1].key, status="failed", error="boom", server="s1", seconds=0.5)
    assert sorted(os.listdir(tmp_path)) == ["index.csv", "index.json"]  # no temporary file left
    rows = list(csv.DictReader(open(tmp_path / "index.csv")))
    assert [(r["concept"], r["status"], r["positive_mass:in"]) for r in rows] == [
        ("a circle", "done", "2.0"), ("a square", "failed", "")]

    again, _ = make_index(tmp_path)
    again.load_previous()
    assert again.done_keys() == {concepts[0].key}  # failed concepts are tried again

    def crash(*_):
        raise OSError("disk full")
    before = (tmp_path / "index.json").read_bytes()
    monkeypatch.setattr(bank.os, "replace", crash)
    with pytest.raises(OSError):
        again.write()
    assert (tmp_path / "index.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["index.csv", "index.json"]


def test_a_killed_runs_temporary_index_file_is_removed_and_nothing_else(tmp_path):
    index, _ = make_index(tmp_path)
    for name in (".tmp-k3j2-index.json", ".tmp-x9-index.csv", "notes.txt", ".tmp-mine"):
        (tmp_path / name).write_text("{")
    index.remove_stale_temporaries()
    assert sorted(os.listdir(tmp_path)) == [".tmp-mine", "notes.txt"]


def test_index_made_with_other_settings_is_refused(tmp_path):
    index, _ = make_index(tmp_path)
    index.write()
    other, _ = make_index(tmp_path, steps=20)
    with pytest.raises(bank.BankInputError, match=r"other settings \(steps differ\)"):
        other.load_previous()


# --- scheduling, on fake servers ---------------------------------------------------------------------------
class FakeServer:
    """Finishes each prompt on its second poll; with `dies_after` it refuses every request once it has taken that
    many prompts (so the last one is in flight when it goes)."""

    def __init__(self, url, dies_after=None):
        self.url, self.dies_after = url, dies_after
        self.submitted, self.polls = [], {}

    def _refuse_if_dead(self):
        if self.dies_after is not None and len(self.submitted) >= self.dies_after:
            raise bank.ServerLost(f"{self.url} does not answer (connection refused)")

    def submit(self, graph):
        self._refuse_if_dead()
        self.submitted.append(graph[bank.CONCEPT]["inputs"]["text"])
        return "queued", f"{self.url}-{len(self.submitted)}"

    def history(self, prompt_id):
        self._refuse_if_dead()
        self.polls[prompt_id] = self.polls.get(prompt_id, 0) + 1
        return history_entry() if self.polls[prompt_id] >= 2 else {"status": {}, "outputs": {}}

    def queued_ids(self):
        self._refuse_if_dead()
        return set()


class ForgetfulServer(FakeServer):
    """Its queue loses every prompt (someone clears it): not in /history, not in /queue."""

    def history(self, prompt_id):
        return None


class QuietProgress:
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)

    def advance(self, failed):
        pass


def run_fake_bank(tmp_path, servers, monkeypatch, text=b"a\nb\nc\nd\n"):
    monkeypatch.setattr(bank, "POLL_SECONDS", 0)
    index, concepts = make_index(tmp_path, text)
    progress = QuietProgress()
    code = bank.Bank(servers, settings(), index, concepts, bank.slugs_for(concepts), progress).run()
    return code, index, progress


def test_each_free_server_takes_the_next_concept(tmp_path, monkeypatch):
    one, two = FakeServer("http://one"), FakeServer("http://two")
    code, index, _ = run_fake_bank(tmp_path, [one, two], monkeypatch)
    assert code == bank.EXIT_OK
    assert one.submitted == ["a", "c"] and two.submitted == ["b", "d"]
    assert {e["server"] for e in index.entries.values()} == {"http://one", "http://two"}


def test_a_lost_servers_concept_moves_to_a_live_server(tmp_path, monkeypatch):
    # 'two' takes 'b', then stops answering while 'b' is in flight: 'b' must be done by 'one'
    one, two = FakeServer("http://one"), FakeServer("http://two", dies_after=1)
    code, index, progress = run_fake_bank(tmp_path, [one, two], monkeypatch)
    assert code == bank.EXIT_OK
    assert two.submitted == ["b"] and sorted(one.submitted) == ["a", "b", "c", "d"]
    assert all(e["status"] == "done" and e["server"] == "http://one" for e in index.entries.values())
    assert any("'b' goes to another server" in n for n in progress.notes)


class TurnedIntoAWebPage(FakeServer):
    """Takes one prompt, then answers with an HTML page (another program took its port)."""

    def _refuse_if_dead(self):
        if self.submitted:
            raise bank.NotComfyUI(f"{self.url} answered /history with an HTML page, not ComfyUI's JSON")


def test_a_server_that_stops_answering_like_comfyui_is_lost_like_one_that_stops_answering(tmp_path, monkeypatch):
    one, two = FakeServer("http://one"), TurnedIntoAWebPage("http://two")
    code, index, progress = run_fake_bank(tmp_path, [one, two], monkeypatch)
    assert code == bank.EXIT_OK
    assert all(e["status"] == "done" and e["server"] == "http://one" for e in index.entries.values())
    assert any(n.startswith("server lost: http://two answered /history with an HTML page") for n in progress.notes)


def test_every_server_lost_stops_with_a_resumable_index(tmp_path, monkeypatch):
    only = FakeServer("http://only", dies_after=1)
    code, index, progress = run_fake_bank(tmp_path, [only], monkeypatch)
    assert code == bank.EXIT_ALL_SERVERS_LOST
    assert "re-run the same command" in progress.notes[-1]
    saved = json.loads((tmp_path / "index.json").read_text())
    assert [e["status"] for e in saved["concepts"]] == ["pending"] * 4


def test_a_prompt_removed_from_the_servers_queue_fails_instead_of_waiting_forever(tmp_path, monkeypatch):
    code, index, _ = run_fake_bank(tmp_path, [ForgetfulServer("http://one")], monkeypatch, text=b"a\n")
    assert code == bank.EXIT_FAILED
    assert "left the server's queue without running" in index.entries["a | "]["error"]


def test_a_prompt_an_interrupted_run_left_on_a_server_is_followed_not_repeated(tmp_path):
    index, concepts = make_index(tmp_path, b"a\nb\nc\n")
    queued, lost = FakeServer("http://one"), FakeServer("http://two")
    queued.queued_ids = lambda: {"p-a"}
    index.record("a | ", status="submitted", server="http://one", prompt_id="p-a", submitted_at=100.0)
    index.record("b | ", status="submitted", server="http://two", prompt_id="p-b", submitted_at=100.0)
    index.record("c | ", status="submitted", server="http://gone", prompt_id="p-c", submitted_at=100.0)
    lost.history = lambda prompt_id: None  # 'two' was restarted: it knows no p-b
    adopted = bank.adopt_submitted(index, [queued, lost], concepts)
    assert {url: (f.concept.text, f.prompt_id, f.started) for url, f in adopted.items()} == {
        "http://one": ("a", "p-a", 100.0)}
    assert index.entries["b | "]["status"] == index.entries["c | "]["status"] == "pending"


def test_progress_without_tqdm_prints_counts_and_an_eta(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    progress = bank.Progress(total=4, already_done=2)
    progress.advance(failed=False)
    progress.advance(failed=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "2 concept(s) already done in the index: skipped"
    assert lines[2].startswith("concept bank: 2/4 done, 1 failed,") and " ETA " in lines[2]


# --- URLs that are not ComfyUI and numbers that are not finite, on fake web servers ----------------------------
def run_main(tmp_path, capsys, monkeypatch, urls, *extra):
    """The command in this process on two concepts: (exit code, stderr)."""
    monkeypatch.setattr(bank, "POLL_SECONDS", 0)
    args = [write_concepts(tmp_path, ["a circle", "a square"]), "--demo-model", "--out", str(tmp_path / "out"), *extra]
    for url in urls:
        args += ["--server", url]
    code = bank.main(args)
    return code, capsys.readouterr().err


def test_a_url_that_is_not_comfyui_is_left_out_and_the_others_carry_on(tmp_path, capsys, monkeypatch):
    comfyui = fake_comfyui(history_entry)
    with serving(HtmlPage) as html, serving(comfyui) as good, serving(JsonOfAnotherApi) as other_api:
        code, err = run_main(tmp_path, capsys, monkeypatch, [html, good, other_api])
    assert code == bank.EXIT_OK, err
    assert f"concept bank: {html} answered /system_stats with an HTML page (title 'Welcome to nginx!'), not " \
           f"ComfyUI's JSON: is this URL a ComfyUI server? It is left out of this run." in err.splitlines()
    assert f"concept bank: {other_api} answered /system_stats with JSON that is not ComfyUI's" in err
    entries = read_index(tmp_path / "out")["concepts"]
    assert [(e["status"], e["server"]) for e in entries] == [("done", good), ("done", good)]
    assert len(comfyui.prompts) == 2


def test_when_no_url_is_comfyui_nothing_runs(tmp_path, capsys, monkeypatch):
    with serving(HtmlPage) as html, serving(ServerError) as broken:
        code, err = run_main(tmp_path, capsys, monkeypatch, [html, broken])
    assert code == bank.EXIT_BAD_INPUT
    assert f"{html} answered /system_stats with an HTML page" in err
    assert f"{broken} answered /system_stats with HTTP 500 Internal Server Error" in err
    assert "No --server is a ComfyUI server (each one was left out, see above); nothing was submitted" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,value", [("--guidance", "nan"), ("--ratio", "inf"), ("--guidance", "-inf"),
                                          ("--timeout", "nan")])
def test_numbers_that_are_not_finite_are_refused_before_any_server_is_asked(tmp_path, capsys, monkeypatch,
                                                                            option, value):
    comfyui = fake_comfyui(history_entry)
    with serving(comfyui) as url:
        code, err = run_main(tmp_path, capsys, monkeypatch, [url], f"{option}={value}")  # '=': '-inf' is no option
    assert code == bank.EXIT_BAD_INPUT
    assert f"Bad settings:\n  {option} must be a finite number, got {float(value)}." in err
    assert comfyui.paths == [], "a server was asked"


def test_a_server_url_that_is_not_http_is_bad_input(tmp_path, capsys, monkeypatch):
    code, err = run_main(tmp_path, capsys, monkeypatch, ["127.0.0.1:8188"])
    assert code == bank.EXIT_BAD_INPUT
    assert "--server '127.0.0.1:8188' is not an http:// or https:// URL (e.g. http://127.0.0.1:8188)." in err


# --- the command on real servers ---------------------------------------------------------------------------
def demo_server(name, checkpoint=None):
    """A real ComfyUI with the pack (the CAD Demo Model needs no checkpoint)."""
    return running_server(f"bank_{name}", checkpoint=checkpoint)


@pytest.fixture(scope="module")
def two_servers(sd15_test_checkpoint):
    """Server a has no checkpoint, server b the narrow random SD1.5 test checkpoint."""
    with demo_server("a") as a, demo_server("b", sd15_test_checkpoint) as b:
        yield a, b


def write_concepts(tmp_path, lines, name="concepts.txt"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_bank(concepts, servers, out, *extra, wait=True, model=("--demo-model",)):
    cmd = [sys.executable, *BANK, concepts, *model, "--out", str(out), *extra]
    for server in servers:
        cmd += ["--server", server if isinstance(server, str) else server.url]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


def prompts_run(server) -> int:
    return len(server.client.history())


def read_index(out):
    return json.loads((out / "index.json").read_text())


def file_on(server_by_url, entry, what):
    server = server_by_url[entry["server"]]
    return os.path.join(server.base_dir, "models", "cad", entry["files"][what])


def bank_folder_files(server):
    folder = os.path.join(server.base_dir, "models", "cad", "bank")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.mark.server
def test_two_servers_write_every_file_and_the_index_then_resume_skips_done(two_servers, tmp_path, cad_pack):
    from cad_pack.cad_core import load_attribution, load_mask

    a, b = two_servers
    servers = {a.url: a, b.url: b}
    concepts = write_concepts(tmp_path, SHAPES[:2] + ["", "# colours against their colour"] + SHAPES[2:] + COLOURED)
    out = tmp_path / "out"
    result = run_bank(concepts, [a, b], out, *QUICK)
    assert result.returncode == 0, result.stderr
    assert "skipped 2 empty or '#' line(s): 3, 4" in result.stderr

    index = read_index(out)
    entries = index["concepts"]
    assert [e["concept"] for e in entries] == SHAPES + ["a red circle", "a blue square"]
    assert [e["base"] for e in entries] == ["", "", "", "", "a red", "a blue"]
    assert all(e["status"] == "done" for e in entries)
    assert {e["server"] for e in entries} == {a.url, b.url}, "both servers should have taken concepts"
    for entry in entries:
        assert entry["files"]["attribution"].startswith(f"bank/{entry['slug']}_0")
        attribution = load_attribution(file_on(servers, entry, "attribution"))
        mask = load_mask(file_on(servers, entry, "mask"))
        assert entry["weights"] == attribution.total_weights > 0
        assert entry["masked"] == mask.count > 0
        summary = attribution.summary()
        assert entry["positive_mass"] == pytest.approx(summary["positive_mass"]) and entry["positive_mass"] > 0
        assert [r["block"] for r in entry["blocks"]] == [r["block"] for r in summary["blocks"]]
        assert [r["positive_mass"] for r in entry["blocks"]] == pytest.approx(
            [r["positive_mass"] for r in summary["blocks"]])
        assert [r["negative_mass"] for r in entry["blocks"]] == pytest.approx(
            [r["negative_mass"] for r in summary["blocks"]])
        assert sum(r["weights"] for r in entry["blocks"]) == entry["weights"]
        assert 0 < entry["seconds"] <= entry["wall_seconds"]
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert [r["concept"] for r in rows] == [e["concept"] for e in entries]
    assert [int(r["masked"]) for r in rows] == [e["masked"] for e in entries]
    first_block = entries[0]["blocks"][0]
    assert float(rows[0][f"positive_mass:{first_block['block']}"]) == pytest.approx(first_block["positive_mass"])

    # resume: nothing is submitted, the index keeps its files
    before = {u: prompts_run(s) for u, s in servers.items()}
    again = run_bank(concepts, [a, b], out, *QUICK)
    assert again.returncode == 0, again.stderr
    assert "6 concept(s) already done in the index: skipped" in again.stderr
    assert {u: prompts_run(s) for u, s in servers.items()} == before
    assert read_index(out)["concepts"] == entries

    # a deleted file is made again, and only that concept is submitted (the first concept: not the last prompt
    # its server ran, which the server would answer from its cache)
    os.remove(file_on(servers, entries[0], "mask"))
    redo = run_bank(concepts, [a, b], out, *QUICK)
    assert redo.returncode == 0, redo.stderr
    assert sum(prompts_run(s) for s in servers.values()) == sum(before.values()) + 1
    redone = read_index(out)["concepts"]
    assert redone[1:] == entries[1:]
    assert os.path.isfile(file_on(servers, redone[0], "mask"))


@pytest.mark.server
def test_a_failing_concept_is_recorded_with_the_servers_message_and_the_rest_go_on(two_servers, tmp_path):
    a, b = two_servers
    # 'a red | a red': CAD Attribute refuses identical concept and base (every score would be 0)
    concepts = write_concepts(tmp_path, ["a red cross | a red", "a red | a red", "a green circle | a green"])
    out = tmp_path / "out"
    result = run_bank(concepts, [a, b], out, *QUICK)
    assert result.returncode == 1, result.stderr
    entries = {e["concept"]: e for e in read_index(out)["concepts"]}
    failed = entries["a red"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("CADAttribute (node 5): 'positive' and 'base' are the same conditioning")
    assert failed["server"] in (a.url, b.url) and not failed["files"]
    assert entries["a red cross"]["status"] == entries["a green circle"]["status"] == "done"
    assert "failed: 'a red' on" in result.stderr and "2 done, 1 failed" in result.stderr
    rows = {r["concept"]: r for r in csv.DictReader(open(out / "index.csv"))}
    assert rows["a red"]["status"] == "failed" and "same conditioning" in rows["a red"]["error"]


def wait_until_running(server, proc, timeout=120):
    """Until `server` executes a prompt (its /queue shows one running)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.client.queue()["queue_running"]:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{server.url} never ran a prompt")


@pytest.mark.server
def test_a_server_killed_mid_run_loses_nothing(two_servers, tmp_path):
    a, _ = two_servers
    concepts = write_concepts(tmp_path, ["a yellow circle", "a yellow square", "a yellow cross", "a green cross"])
    out = tmp_path / "out"
    with demo_server("doomed") as doomed:
        # enough steps that the doomed server is still attributing when it is terminated
        proc = run_bank(concepts, [a, doomed], out, "--steps", "25", "--ratio", "0.05", wait=False)
        wait_until_running(doomed, proc)
        doomed.stop()
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert f"server lost: {doomed.url} does not answer" in stderr and "goes to another server" in stderr
    entries = read_index(out)["concepts"]
    assert all(e["status"] == "done" for e in entries)
    assert {e["server"] for e in entries} == {a.url}  # the doomed server finished none
    moved = [e for e in entries if e["concept"] == "a yellow square"][0]  # the second concept: the doomed one's
    assert os.path.isfile(os.path.join(a.base_dir, "models", "cad", moved["files"]["attribution"]))
    assert bank_folder_files(doomed) == [], "the killed server left a file (partial or orphan)"


@pytest.mark.server
def test_every_server_lost_stops_clearly_and_the_rerun_finishes(two_servers, tmp_path):
    a, _ = two_servers
    concepts = write_concepts(tmp_path, ["a blue circle", "a blue cross", "a green square"])
    out = tmp_path / "out"
    with demo_server("lonely") as lonely:
        proc = run_bank(concepts, [lonely], out, "--steps", "25", "--ratio", "0.05", wait=False)
        wait_until_running(lonely, proc)
        lonely.stop()
        _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 3, stderr
    assert "Every server was lost; 3 concept(s) not done" in stderr and "re-run the same command" in stderr
    assert [e["status"] for e in read_index(out)["concepts"]] == ["pending"] * 3

    before = prompts_run(a)
    rerun = run_bank(concepts, [a], out, "--steps", "25", "--ratio", "0.05")
    assert rerun.returncode == 0, rerun.stderr
    assert prompts_run(a) == before + 3
    assert [e["status"] for e in read_index(out)["concepts"]] == ["done"] * 3


@pytest.mark.server
def test_a_killed_command_leaves_a_whole_index_and_the_rerun_repeats_no_prompt(two_servers, tmp_path):
    a, _ = two_servers
    concepts = write_concepts(tmp_path, ["a green triangle", "a blue triangle", "a yellow triangle"])
    out = tmp_path / "out"
    before = prompts_run(a)
    proc = run_bank(concepts, [a], out, "--steps", "25", "--ratio", "0.05", wait=False)
    wait_until_running(a, proc)
    deadline = time.time() + 60  # the command records the prompt right after ComfyUI accepts it
    while read_index(out)["concepts"][0]["status"] != "submitted" and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no clean-up of any kind
    proc.communicate()
    index = read_index(out)  # whole JSON: it was replaced atomically
    assert [e["status"] for e in index["concepts"]] == ["submitted", "pending", "pending"]
    assert [r["status"] for r in csv.DictReader(open(out / "index.csv"))][1:] == ["pending", "pending"]
    # the kill may land while a temporary file is being written beside the index; the re-run removes it
    assert {f for f in os.listdir(out) if not f.startswith(bank.TEMP_PREFIX)} == {"index.csv", "index.json"}

    rerun = run_bank(concepts, [a], out, "--steps", "25", "--ratio", "0.05")
    assert rerun.returncode == 0, rerun.stderr
    assert "following 1 prompt(s) an earlier run left" in rerun.stderr
    assert prompts_run(a) == before + 3, "a prompt was submitted twice"
    entries = read_index(out)["concepts"]
    assert [e["status"] for e in entries] == ["done"] * 3
    assert entries[0]["prompt_id"] == index["concepts"][0]["prompt_id"]
    assert sorted(os.listdir(out)) == ["index.csv", "index.json"]
    ours = [f for f in bank_folder_files(a) if "triangle" in f and not f.startswith("a_triangle")]
    assert sorted(ours) == sorted(os.path.basename(f) for e in entries for f in e["files"].values())


@pytest.mark.server
def test_a_checkpoint_bank_attributes_the_checkpoints_model(two_servers, tmp_path, cad_pack):
    from cad_pack.cad_core import load_attribution

    _, b = two_servers
    concepts = write_concepts(tmp_path, ["a photo of a cat"])
    out = tmp_path / "out"
    result = run_bank(concepts, [b], out, "--steps", "2", "--size", "64", "--save", "attribution",
                      model=("--checkpoint", b.ckpt_name))
    assert result.returncode == 0, result.stderr
    entry = read_index(out)["concepts"][0]
    assert entry["status"] == "done" and list(entry["files"]) == ["attribution"] and entry["masked"] is None
    attribution = load_attribution(os.path.join(b.base_dir, "models", "cad", entry["files"]["attribution"]))
    # the test checkpoint's ff scope: 4 transformer blocks of [2560, 320] and [320, 1280] (test_server_e2e.py)
    assert entry["weights"] == attribution.total_weights == 4 * (2560 * 320 + 320 * 1280)
    assert [row["block"] for row in entry["blocks"]] == ["input_blocks.1", "middle_block", "output_blocks.0",
                                                          "output_blocks.1"]


@pytest.fixture
def comfyui_without_pack():
    with serving(ComfyUIWithoutThePack) as url:
        yield url


@pytest.mark.server
def test_bad_input_is_refused_before_anything_is_submitted(two_servers, tmp_path, comfyui_without_pack):
    from scripts.comfy_server import free_port

    a, b = two_servers
    good = write_concepts(tmp_path, ["a circle", "a square"])
    duplicates = write_concepts(tmp_path, ["a circle", "a square", "a circle", "", "a square"], "dup.txt")
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}\0\0\0\0\xff\xfe")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a circle\nun carré\n".encode("latin-1"))
    nobody = f"http://127.0.0.1:{free_port()}"
    cases = [
        ([duplicates, "--demo-model"], [a], "'a circle | ' appears on lines 1, 3"),
        ([duplicates, "--demo-model"], [a], "'a square | ' appears on lines 2, 5"),
        ([str(binary), "--demo-model"], [a], "is not a text file (it contains NUL bytes"),
        ([str(latin1), "--demo-model"], [a], "is not UTF-8 text (undecodable byte 0xe9 on line 2)"),
        ([good, "--checkpoint", "sd15.safetensors"], [a, b],
         f"{a.url}: checkpoint 'sd15.safetensors' is not in its models/checkpoints/ (it has: none)"),
        ([good, "--checkpoint", "sd15.safetensors"], [a, b],
         f"{b.url}: checkpoint 'sd15.safetensors' is not in its models/checkpoints/ (it has: {b.ckpt_name})"),
        ([good, "--checkpoint", b.ckpt_name], [a, b], f"{a.url}: checkpoint '{b.ckpt_name}' is not in its"),
        ([good, "--demo-model"], [a, nobody], f"{nobody} does not answer ([Errno 111] Connection refused): "
                                              f"unreachable. Start ComfyUI there"),
        ([good, "--demo-model"], [a, comfyui_without_pack],
         f"{comfyui_without_pack}: the comfyui-cad pack is not installed there (no CADAttribute in /object_info)"),
        ([good, "--demo-model", "--objective", "concept_vibes"], [a], "objective 'concept_vibes' is not one"),
        ([str(tmp_path / "missing.txt"), "--demo-model"], [a], "Cannot read the concepts file"),
    ]
    before = {s.url: prompts_run(s) for s in (a, b)}
    for args, servers, phrase in cases:
        cmd = [sys.executable, *BANK, *args, "--out", str(tmp_path / "out")]
        for server in servers:
            cmd += ["--server", server if isinstance(server, str) else server.url]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert result.returncode == 2, (args, result.stderr)
        assert phrase in result.stderr, (phrase, result.stderr)
    assert {s.url: prompts_run(s) for s in (a, b)} == before, "bad input reached a server"
    assert not (tmp_path / "out" / "index.json").exists()
