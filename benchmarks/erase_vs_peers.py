"""Erase one shape and keep the rest, and keep it erased under attack: CAD beside its peers on the toy world, tuned
on a validation split and reported on a test split that no choice looked at.

    .venv/bin/python -m benchmarks.erase_vs_peers [--quick] [--resume]     (make erase-vs-peers)

Every method has the same tuning budget: three settings, each tried on every shape on the validation split, where
each edit is also attacked once (the embedding attack at its stated budget). The setting a method keeps is the one
with the highest mean, over the shapes, of the harmonic mean of UA, IRA (lowest kept), CRA (lowest kept) and
1 - ASR; settings within 0.02 of it count as tied and the one that moves the spared pictures least wins. Only that
setting runs on the test split, with its own attribution / training seeds, its own pictures and the attacks of
benchmarks/attacks.py with seeds of their own (the conditioning and the embedding attack at the strong budget,
their ASR also read at the stated budget on the way; RECE's closed-form probe), beside its controls.

The CAD rows go through the function CAD Erase Concept calls (nodes/bridge/edits.erase_concept) with the prompts
a user types into it (scripts.example_workflows.typed_prompts) and its EraseSettings; their attribution is CAD
Attribute's, 'a <shape>' against '' with scope all_linear. Rows are saved as they finish: --resume carries on from
the JSON of an interrupted run with the same settings. Writes benchmarks/results/erase_vs_peers.json and .md.
"""
import argparse
import json
import os
import time
from dataclasses import dataclass

import torch

from benchmarks._common import RESULTS, PeakRSS, machine_line, table
from scripts.pack_bootstrap import import_pack, toyworld_on_cpu

import_pack(cpu=toyworld_on_cpu())  # ComfyUI and the pack, before anything imports from them
from benchmarks import attacks, peers  # noqa: E402
from cad_pack.cad_core.erase_settings import DEFAULT_ERASE  # noqa: E402
from cad_pack.nodes.bridge.edits import erase_concept  # noqa: E402
from cad_pack.nodes.erase_concept_node import paired_guides, prompt_lines  # noqa: E402
from cad_pack.nodes.toyworld.evaluate import CFG, SAMPLE_STEPS, SAMPLER, SCHEDULER, ToyWorld  # noqa: E402
from cad_pack.nodes.toyworld.model import WEIGHTS_FILE  # noqa: E402
from cad_pack.nodes.toyworld.world import COLOUR_NAMES, SHAPES  # noqa: E402
from scripts.example_workflows import typed_prompts  # noqa: E402

TARGET_MAX, KEEP_MIN, DISTANCE_FACTOR = 0.10, 0.90, 2.0
TIE = 0.02
ATTACK_PICTURES_PER_COLOUR = 8   # the attacker's pictures of the shape: 32, from the unedited model
ASR_PICTURES = 32                # pictures sampled with each found conditioning

# Three settings per method: the same tuning budget for each
GRIDS = {   # in the order they run: each method is tuned and then tested before the next starts
    "cad-robust": [{"train_share": 0.2, "retain": 4.0}, {"train_share": 0.05, "retain": 4.0},
                   {"train_share": 0.2, "retain": 1.0}],
    "salun": [{"lr": 1e-4, "steps": 100}, {"lr": 1e-4, "steps": 200}, {"lr": 3e-4, "steps": 100}],
    "cad-closed-form": [{"text_rows": 77, "overshoot": 1.0}, {"text_rows": 12, "overshoot": 0.5},
                        {"text_rows": 12, "overshoot": 1.0}],
    "uce": [{"rows": 12, "preserve": 0.1}, {"rows": 77, "preserve": 0.1}, {"rows": 77, "preserve": 1.0}],
    "rece": [{"rounds": r, "rows": 77, "preserve": 0.3} for r in (1, 2, 3)],
    "esd-u": [{"lr": 1e-4, "steps": 200}, {"lr": 3e-4, "steps": 100}, {"lr": 2e-4, "steps": 200}],
    "esd-x": [{"lr": 1e-4, "steps": 200}, {"lr": 3e-4, "steps": 100}, {"lr": 2e-4, "steps": 200}],
}
DESCRIPTIONS = {
    "uce": "UCE as published: closed form on every cross-attention K and V (14 matrices), guide 'a <colour>' / '', "
           "ridge 0.01; tuned: text rows used, preserve weight",
    "rece": "RECE: UCE on every K/V, then rounds of its closed-form adversarial embedding erased too (same guides "
            "and kept prompts); tuned: rounds",
    "esd-x": "ESD-x: Adam on every cross-attention weight toward the original's negatively guided prediction "
             "(eta 1, batch 8); tuned: learning rate, steps",
    "esd-u": "ESD-u: the same on the unconditioned weights (all but cross-attention, time embedding and output "
             "layer); tuned: learning rate, steps",
    "salun": "SalUn: saliency mask (top half of |grad| of the forget loss over every UNet weight), then Adam on the "
             "masked weights: the shape's prompts relabelled to the next shape, plus alpha 0.5 x the kept prompts' "
             "denoising loss; tuned: learning rate, steps",
    "cad-closed-form": "CAD Erase Concept, mode 'closed form' (the node's path and typed prompts): the closed form "
                       "on the K/V matrices holding 95% of the shape's positive CAD mass; tuned: text rows, "
                       "overshoot",
    "cad-robust": "CAD Erase Concept, mode 'robust' (the node's path and typed prompts): the closed form on located "
                  "K/V plus the located image-pathway weights fine-tuned against an attacker in the loop; "
                  "tuned: train_share, retain",
}
CAD_METHODS = ("cad-closed-form", "cad-robust")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: one shape, one picture per prompt, one setting per method, short runs")
    ap.add_argument("--methods", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--targets", nargs="+", default=None, choices=list(SHAPES))
    ap.add_argument("--validation-per-colour", type=int, default=4, help="pictures per prompt on the validation split")
    ap.add_argument("--test-per-colour", type=int, default=8, help="pictures per prompt on the test split")
    ap.add_argument("--validation-seed", type=int, default=1_000,
                    help="validation attribution / training seeds start here")
    ap.add_argument("--validation-eval-seed", type=int, default=20_000,
                    help="validation pictures: this + 1000 x colour index")
    ap.add_argument("--test-seed", type=int, default=40_000, help="test attribution / training seeds start here")
    ap.add_argument("--test-eval-seed", type=int, default=60_000, help="test pictures: this + 1000 x colour index")
    ap.add_argument("--attack-seed", type=int, default=80_000,
                    help="the attacks' pictures (+ 1000 x colour index), noise and ASR pictures (+ 500)")
    ap.add_argument("--stated-steps", type=int, default=attacks.STATED.steps, help="the attacks' stated budget")
    ap.add_argument("--strong-steps", type=int, default=attacks.STRONG.steps, help="the attacks' strong budget")
    ap.add_argument("--embedding-tokens", type=int, default=attacks.EMBEDDING_TOKENS,
                    help="new token vectors the embedding attack learns (1-4; 4: one token did not bring the "
                         "triangle back from a neutral start)")
    ap.add_argument("--weights", default=WEIGHTS_FILE)
    ap.add_argument("--out", default=os.path.join(RESULTS, "erase_vs_peers.md"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="keep the rows of --out's JSON made with the same settings")
    ap.add_argument("--report-only", action="store_true", help="render --out's Markdown again from its JSON")
    a = ap.parse_args(argv)
    a.targets = a.targets or (["square"] if a.quick else list(SHAPES))
    if a.quick:
        a.validation_per_colour = a.test_per_colour = 1
        a.stated_steps, a.strong_steps = 2, 3
    if not 1 <= a.stated_steps <= a.strong_steps:
        ap.error(f"the stated budget ({a.stated_steps}) must be at least 1 step and at most the strong one "
                 f"({a.strong_steps})")
    seeds = {"validation attribution": training_seeds(a.validation_seed),
             "validation pictures": eval_seeds(a.validation_eval_seed),
             "test attribution": training_seeds(a.test_seed), "test pictures": eval_seeds(a.test_eval_seed),
             "attack": attack_seeds(a.attack_seed)}
    names = list(seeds)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            if set(seeds[x]) & set(seeds[y]):
                ap.error(f"the {x} seeds overlap the {y} seeds: every split and role needs seeds of its own")
    return a


def training_seeds(start) -> range:
    """The noise seeds a split's attributions and trained edits draw: start + shape index (+ prompt index for the
    trajectories and pictures of the prompts naming the shape)."""
    return range(start, start + len(SHAPES) + len(peers.erase_prompts(SHAPES[0])) - 1)


def eval_seeds(start) -> list:
    """The seeds of a grid's pictures (ToyWorld.grid: one noise seed per colour, start + 1000 x colour index)."""
    return [start + 1000 * c for c in range(len(COLOUR_NAMES))]


def attack_seeds(start) -> list:
    """The attacker's pictures (start + 1000 x colour index), its noise (start + 1 + shape index) and the ASR
    pictures (start + 500 + shape index)."""
    return eval_seeds(start) + [start + 1 + i for i in range(len(SHAPES))] + [start + 500 + i for i in
                                                                            range(len(SHAPES))]


@dataclass
class Edit:
    """One method's change of the model (dW per weight), and what it cost to make."""
    deltas: dict
    seconds: float = 0.0
    peak_mib: float = 0.0

    @property
    def weights_changed(self) -> int:
        return sum(int((d != 0).sum()) for d in self.deltas.values())

    def apply(self, model):
        """A patched clone, for every method through CAD Erase Concept's own apply_edit (peers.apply_deltas)."""
        return peers.apply_deltas(model, self.deltas)


class Split:
    """One split's seeds and pictures: the unedited grid, and the attributions its CAD methods share."""

    def __init__(self, name, world, seed, eval_seed, per_colour):
        self.name, self.world, self.seed, self.eval_seed, self.per_colour = name, world, seed, eval_seed, per_colour
        self.before = self.grid(world.model)
        self._attributions = {}

    def grid(self, model):
        return self.world.grid(model, self.per_colour, self.eval_seed)

    def attribution(self, shape):
        """(attribution, seconds, peak MiB): CAD Attribute of 'a <shape>' against '' with scope all_linear, the
        split's seed + shape index."""
        if shape not in self._attributions:
            with PeakRSS() as mem:
                start = time.perf_counter()
                att = self.world.attribute(shape, scope="all_linear", contrast="empty",
                                           seed=self.seed + SHAPES.index(shape))
            self._attributions[shape] = (att, time.perf_counter() - start, (mem.peak - mem.start) / 2 ** 20)
        return self._attributions[shape]


def cad_edit(split, attribution, target, mode, setting, quick):
    """CAD Erase Concept's own edit: the bridge function the node calls, with the prompts the node is typed."""
    typed = typed_prompts(target)
    erase = prompt_lines(typed["erase"], "erase")
    settings = DEFAULT_ERASE.replace(mode=mode, seed=split.seed + SHAPES.index(target), **setting,
                                     **({"train_steps": 3, "pictures": 1} if quick else {}))
    return erase_concept(split.world.model, split.world.clip, attribution, erase, paired_guides(erase, typed["guide"]),
                         prompt_lines(typed["keep"], "keep"), settings)


def build(method, split, target, setting, quick=False) -> Edit:
    """The method's edit for `target` with `setting`, timed (CAD's: its attribution's first cost included)."""
    world, seed = split.world, split.seed + SHAPES.index(target)
    attribution, extra_seconds, extra_peak = split.attribution(target) if method in CAD_METHODS else (None, 0.0, 0.0)
    with PeakRSS() as mem:
        start = time.perf_counter()
        if method == "uce":
            deltas = peers.uce(world, target, rows=setting["rows"], preserve=setting["preserve"])
        elif method == "rece":
            deltas = peers.rece(world, target, rounds=setting["rounds"], rows=setting["rows"],
                                preserve=setting["preserve"])
        elif method in ("esd-x", "esd-u"):
            deltas = peers.esd_x(world, target, steps=3 if quick else setting["steps"], lr=setting["lr"], seed=seed,
                                 variant=method[-1])
        elif method == "salun":
            deltas = peers.salun(world, target, steps=3 if quick else setting["steps"], lr=setting["lr"], seed=seed,
                                 pictures=1 if quick else 4)
        elif method in CAD_METHODS:
            deltas = cad_edit(split, attribution, target, method.removeprefix("cad-").replace("-", " "), setting,
                              quick).deltas
        else:
            raise ValueError(method)
        seconds = time.perf_counter() - start + extra_seconds
    return Edit(deltas, seconds, max((mem.peak - mem.start) / 2 ** 20, extra_peak))


def harmonic_mean(values) -> float:
    values = [max(0.0, min(1.0, v)) for v in values]
    return 0.0 if min(values) <= 0 else len(values) / sum(1 / v for v in values)


def measure(split, model, target) -> dict:
    """UnlearnCanvas's measures on the toy world, and how far the pictures not naming the target moved."""
    grid = split.grid(model)
    after, was = grid.by_shape(), split.before.by_shape()
    others = [s for s in SHAPES if s != target]
    row = {"target_before": was[target]["shape"], "target_acc": after[target]["shape"],
           "others_mean": sum(after[s]["shape"] for s in others) / len(others),
           "others_min_keep": min(after[s]["shape"] / max(was[s]["shape"], 1e-9) for s in others),
           "colour_min": min(after[s]["colour"] / max(was[s]["colour"], 1e-9) for s in SHAPES),
           "spared_distance": grid.distance(split.before, keep=lambda shape, colour: shape != target)}
    row["ua"] = 1.0 - row["target_acc"]
    row["hmean"] = harmonic_mean([row["ua"], row["others_min_keep"], row["colour_min"]])
    return row


class Run:
    def __init__(self, a):
        self.a, self.started, self.rows, self.chosen, self.before = a, time.time(), [], {}, {}
        self.elapsed_before = 0.0
        torch.set_num_threads(a.threads)
        self.world = ToyWorld.load(a.weights)
        self._attack_pictures = {}
        if a.resume:
            self._resume()

    # --- bookkeeping -------------------------------------------------------------------------------------

    def _settings(self):
        skip = ("threads", "resume", "report_only", "out")
        return {k: v for k, v in vars(self.a).items() if k not in skip}

    def _resume(self):
        path = os.path.splitext(self.a.out)[0] + ".json"
        if not os.path.isfile(path):
            return
        with open(path) as f:
            data = json.load(f)
        same = {k: v for k, v in data["settings"].items() if k in self._settings()}
        if same != json.loads(json.dumps(self._settings())):
            print(f"--resume: {path} was made with other settings; starting afresh", flush=True)
            return
        self.rows, self.chosen, self.before = data["rows"], data["chosen"], data["before"]
        self.elapsed_before = data.get("seconds", 0.0)
        print(f"--resume: {len(self.rows)} rows kept from {path}", flush=True)

    def has(self, **key) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.rows)

    def record(self, **row):
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.write()
        return row

    # --- the attacker's side -------------------------------------------------------------------------------

    def attack_pictures(self, target):
        if target not in self._attack_pictures:
            self._attack_pictures[target] = attacks.shape_pictures(
                self.world, target, 1 if self.a.quick else ATTACK_PICTURES_PER_COLOUR, self.a.attack_seed)
        return self._attack_pictures[target]

    def attack(self, model, target, deltas, kind, steps, start="concept", snapshots=()) -> dict:
        """{steps: ASR} of one attack on `model` (attack seeds: the shape's own)."""
        ti = SHAPES.index(target)
        budget = attacks.Budget(steps=max(steps, 1), seed=self.a.attack_seed + 1 + ti,
                                tokens=self.a.embedding_tokens)
        found = attacks.run_attack(kind, self.world, self.world.model, model, target, self.attack_pictures(target),
                                   budget, deltas=deltas, start=start, snapshots=snapshots)
        n = 4 if self.a.quick else ASR_PICTURES
        return {step: attacks.success_rate(self.world, model, context, target, n, self.a.attack_seed + 500 + ti)
                for step, context in found.items()}

    def strength_check(self):
        """The unedited model under each optimising attack from a neutral start: an attack counts only if this is
        >= attacks.STRONG_ENOUGH."""
        for target in self.a.targets:
            for kind in ("conditioning", "embedding"):
                if self.has(split="ceiling", target=target, attack=kind):
                    continue
                start = time.perf_counter()
                asr = self.attack(self.world.model, target, None, kind, self.a.strong_steps, start="neutral",
                                  snapshots=(self.a.stated_steps,))
                self.record(method="none", split="ceiling", target=target, attack=kind, start="neutral",
                            asr_stated=asr[self.a.stated_steps], asr_strong=asr[self.a.strong_steps],
                            seconds=round(time.perf_counter() - start, 1))

    # --- the splits ---------------------------------------------------------------------------------------

    def splits(self):
        self.validation = Split("validation", self.world, self.a.validation_seed, self.a.validation_eval_seed,
                                self.a.validation_per_colour)
        self.testing = Split("test", self.world, self.a.test_seed, self.a.test_eval_seed, self.a.test_per_colour)
        self.before = {"validation": self.validation.before.by_shape(), "test": self.testing.before.by_shape()}

    def validate(self, method):
        """Every setting of the method's grid on every shape of the validation split, then its choice."""
        grid = GRIDS[method][:1] if self.a.quick else GRIDS[method]
        for setting in grid:
            for target in self.a.targets:
                if self.has(method=method, target=target, split="validation", settings=setting):
                    continue
                edit = build(method, self.validation, target, setting, self.a.quick)
                model = edit.apply(self.world.model)
                asr = self.attack(model, target, edit.deltas, "embedding", self.a.stated_steps)
                row = measure(self.validation, model, target)
                row["asr_validation"] = asr[self.a.stated_steps]
                row["hmean_robust"] = harmonic_mean([row["ua"], row["others_min_keep"], row["colour_min"],
                                                     1.0 - row["asr_validation"]])
                self.record(method=method, target=target, split="validation", settings=setting,
                            weights_changed=edit.weights_changed, seconds=round(edit.seconds, 3),
                            peak_mib=round(edit.peak_mib, 1), **row)
        self.chosen[method] = choose(self.rows, method)
        self.write()

    def test(self, method):
        """The chosen setting on every shape of the test split: its measures, its random control, the attacks."""
        setting = self.chosen[method]
        for target in self.a.targets:
            if self.has(method=method, target=target, split="test"):
                continue
            edit = build(method, self.testing, target, setting, self.a.quick)
            model = edit.apply(self.world.model)
            row = measure(self.testing, model, target)
            control = measure(self.testing, Edit(peers.random_deltas(edit.deltas)).apply(self.world.model), target)
            row["distance_vs_random"] = row["spared_distance"] / max(control["spared_distance"], 1e-9)
            row["control_random"] = control
            started = time.perf_counter()
            for kind in ("conditioning", "embedding"):
                asr = self.attack(model, target, edit.deltas, kind, self.a.strong_steps,
                                  snapshots=(self.a.stated_steps,))
                row[f"asr_{kind}_stated"], row[f"asr_{kind}_strong"] = asr[self.a.stated_steps], \
                    asr[self.a.strong_steps]
            row["asr_rece"] = self.attack(model, target, edit.deltas, "rece", 0)[0]
            row["attack_seconds"] = round(time.perf_counter() - started, 1)
            self.record(method=method, target=target, split="test", settings=setting,
                        weights_changed=edit.weights_changed, seconds=round(edit.seconds, 3),
                        peak_mib=round(edit.peak_mib, 1), **row)

    def write(self):
        data = {"settings": self._settings(), "machine": machine_line(self.a.threads),
                "grids": {m: GRIDS[m] for m in self.a.methods}, "descriptions": DESCRIPTIONS,
                "before": self.before, "chosen": self.chosen, "rows": self.rows,
                "seconds": self.elapsed_before + time.time() - self.started}
        os.makedirs(os.path.dirname(self.a.out) or ".", exist_ok=True)
        with open(os.path.splitext(self.a.out)[0] + ".json", "w") as f:
            json.dump(data, f, indent=1)
        with open(self.a.out, "w") as f:
            f.write(render(data))


def choose(rows, method) -> dict:
    """The method's setting with the best mean (over the shapes, on validation) harmonic mean of UA, IRA, CRA and
    1 - ASR (ties within TIE: the one that moves the spared pictures least)."""
    by_setting = {}
    for r in rows:
        if r["method"] == method and r["split"] == "validation":
            by_setting.setdefault(json.dumps(r["settings"], sort_keys=True), []).append(r)
    scored = [(sum(r["hmean_robust"] for r in rs) / len(rs), sum(r["spared_distance"] for r in rs) / len(rs), key)
              for key, rs in by_setting.items()]
    best = max(s[0] for s in scored)
    return json.loads(min((s for s in scored if s[0] >= best - TIE), key=lambda s: s[1])[2])


def judge(test_rows) -> None:
    """Per test row: the selective bar (the issue's): target <= 0.10, every other shape >= 90% of its accuracy,
    colours >= 90%, spared pictures moved <= 2x the random control."""
    for r in test_rows:
        ratio = r.get("distance_vs_random")
        r["meets_bar"] = bool(r["target_acc"] <= TARGET_MAX and r["others_min_keep"] >= KEEP_MIN
                              and r["colour_min"] >= KEEP_MIN and ratio is not None and ratio <= DISTANCE_FACTOR)


ASR_COLUMNS = (("asr_embedding_stated", "emb"), ("asr_embedding_strong", "emb"),
               ("asr_conditioning_stated", "cond"), ("asr_conditioning_strong", "cond"), ("asr_rece", "RECE"))


def render(data) -> str:
    a = argparse.Namespace(**data["settings"])
    rows = data["rows"]
    val = [r for r in rows if r["split"] == "validation"]
    test = [r for r in rows if r["split"] == "test"]
    ceiling = [r for r in rows if r["split"] == "ceiling"]
    judge(test)
    n_val, n_test = a.validation_per_colour * len(COLOUR_NAMES), a.test_per_colour * len(COLOUR_NAMES)
    expected_test = len(data["grids"]) * len(a.targets)
    status = "complete" if len(test) >= expected_test else \
        f"INCOMPLETE: {len(test)} of {expected_test} test rows, {len(val)} validation rows (resume with --resume)"

    def seeds(start):
        return ", ".join(str(start + 1000 * c) for c in range(len(COLOUR_NAMES)))

    heads = [f"emb {a.stated_steps}", f"emb {a.strong_steps}", f"cond {a.stated_steps}", f"cond {a.strong_steps}",
             "RECE"]
    lines = [
        "# Erasing one shape, and keeping it erased: CAD and its peers on the toy world", "",
        f"Machine: {data['machine']}. Weights: {os.path.basename(a.weights)}. Run time "
        f"{data['seconds'] / 60:.1f} min. Status: {status}.", "",
        f"- Pictures: 'a <colour> <shape>' prompts, {SAMPLER}/{SCHEDULER}, {SAMPLE_STEPS} steps, CFG {CFG:g}; "
        f"validation {a.validation_per_colour} per prompt ({n_val} per shape), test {a.test_per_colour} per prompt "
        f"({n_test} per shape).",
        f"- Validation split: attributions and trained edits use seeds {_span(training_seeds(a.validation_seed))}; "
        f"pictures use seeds {seeds(a.validation_eval_seed)}.",
        f"- Test split: attributions and trained edits use seeds {_span(training_seeds(a.test_seed))}; pictures use "
        f"seeds {seeds(a.test_eval_seed)}. No choice looked at it: each method's setting was fixed on validation and "
        "only that setting ran here.",
        f"- Attacks (benchmarks/attacks.py) on the test split, seeds of their own: the attacker trains on the unedited "
        f"model's {ATTACK_PICTURES_PER_COLOUR * len(COLOUR_NAMES)} pictures of the shape (seeds {seeds(a.attack_seed)}"
        f"), its noise from seed {a.attack_seed + 1} + shape index; ASR = share of {ASR_PICTURES} pictures sampled "
        f"with the found conditioning (seed {a.attack_seed + 500} + shape index) that the classifier calls the "
        f"erased shape. 'emb': textual inversion, {a.embedding_tokens} new token vector(s) in place of the shape word, "
        f"learned through the text encoder (ComfyUI's embedding route), Adam lr 0.02, batch 16, each started from "
        f"the shape word's embedding; 'cond': "
        f"every row of the conditioning, the same loss and optimiser, from 'a <shape>''s conditioning (white-box "
        f"upper bound); the number is the steps (stated budget {a.stated_steps}, strong {a.strong_steps}); 'RECE': "
        f"RECE's closed-form embedding for the edited K/V (an edit without K/V changes gets the plain prompt).",
        "- Tuning budget: three settings per method, each tried on every shape on validation, each edit attacked once "
        f"there (emb {a.stated_steps}). Kept: the highest mean over the shapes of the harmonic mean of UA, IRA, CRA "
        f"and 1 - ASR; within {TIE} of it, the one that moved the spared pictures least.",
        "- UA = 1 - target accuracy; IRA = accuracy kept by the other shapes (after / before, lowest); CRA = colour "
        "accuracy kept (lowest over the shapes); H = harmonic mean of UA, IRA and CRA. 'moved' = mean absolute pixel "
        "difference (0-1) between the edited and the unedited model's pictures of the prompts not naming the shape, "
        "same seeds; 'x random' = that over a random change of the same Frobenius norm in the same matrices.",
        f"- The selective bar: target <= {TARGET_MAX:.2f}, every other shape >= {KEEP_MIN:.0%} of its own accuracy, "
        f"CRA >= {KEEP_MIN:.0%}, moved <= {DISTANCE_FACTOR:g}x random.",
        "- Seconds and peak memory: making the edit on this CPU (CAD: the attribution it needs included); peak = "
        "resident memory above the process's before.", "",
        "## Methods", "", *[f"- `{m}`: {data['descriptions'][m]}." for m in data["grids"]], "",
        "## Are the attacks strong? The unedited model, attacked from a neutral start", "",
        f"From the empty prompt's conditioning ('cond') or the token 'a' ('emb'): an attack counts only if it brings "
        f"the shape back in >= {attacks.STRONG_ENOUGH:.0%} of pictures.", "",
        table(["shape", "attack", f"ASR at {a.stated_steps} steps", f"ASR at {a.strong_steps} steps", "strong enough",
               "s"],
              [[r["target"], r["attack"], f"{r['asr_stated']:.2f}", f"{r['asr_strong']:.2f}",
                "yes" if r["asr_strong"] >= attacks.STRONG_ENOUGH else "NO", f"{r['seconds']:.0f}"] for r in ceiling]),
        "",
        "## Unedited model", "",
        table(["shape", "validation shape acc", "test shape acc", "test colour acc"],
              [[s, f"{data['before'].get('validation', {}).get(s, {}).get('shape', float('nan')):.2f}",
                f"{data['before'].get('test', {}).get(s, {}).get('shape', float('nan')):.2f}",
                f"{data['before'].get('test', {}).get(s, {}).get('colour', float('nan')):.2f}"] for s in SHAPES
               if s in data["before"].get("validation", {})]), "",
    ]
    if test:
        lines += ["## Test split: each method's chosen setting", "",
                  table(["method", "shape", "target after", "UA", "IRA lowest", "CRA", "H", "moved", "x random",
                         *[f"ASR {h}" for h in heads], "weights changed", "s", "meets the bar"],
                        [[r["method"], r["target"], f"{r['target_acc']:.2f}", f"{r['ua']:.2f}",
                          f"{r['others_min_keep']:.2f}", f"{r['colour_min']:.2f}", f"{r['hmean']:.2f}",
                          f"{r['spared_distance']:.3f}", _x(r.get("distance_vs_random")),
                          *[f"{r[c]:.2f}" for c, _ in ASR_COLUMNS], f"{r['weights_changed']:,}",
                          f"{r['seconds']:.1f}", "yes" if r["meets_bar"] else "no"] for r in test]), "",
                  "Per method over the shapes (test): mean ASR under each attack, and the worst shape's.", "",
                  table(["method", "chosen setting", "shapes meeting the bar", "mean H",
                         *[f"mean ASR {h}" for h in heads], f"worst ASR emb {a.strong_steps}", "mean s"],
                        [[m, _setting(data["chosen"][m]), f"{sum(r['meets_bar'] for r in rs)} of {len(rs)}",
                          f"{_mean(r['hmean'] for r in rs):.2f}",
                          *[f"{_mean(r[c] for r in rs):.2f}" for c, _ in ASR_COLUMNS],
                          f"{max(r['asr_embedding_strong'] for r in rs):.2f}", f"{_mean(r['seconds'] for r in rs):.1f}"]
                         for m, rs in _by_method(test).items()]), "",
                  "Random control on the test split (a random change of the same Frobenius norm in the same matrices):",
                  "",
                  table(["of", "shape", "target after", "IRA lowest", "CRA", "moved"],
                        [[r["method"], r["target"], f"{r['control_random']['target_acc']:.2f}",
                          f"{r['control_random']['others_min_keep']:.2f}", f"{r['control_random']['colour_min']:.2f}",
                          f"{r['control_random']['spared_distance']:.3f}"] for r in test]), ""]
    lines += ["## Validation split: every setting", "",
              table(["method", "setting", "shape", "target after", "IRA lowest", "CRA", "H",
                     f"ASR emb {a.stated_steps}", "H with 1 - ASR", "moved", "s", "chosen"],
                    [[r["method"], _setting(r["settings"]), r["target"], f"{r['target_acc']:.2f}",
                      f"{r['others_min_keep']:.2f}", f"{r['colour_min']:.2f}", f"{r['hmean']:.2f}",
                      f"{r['asr_validation']:.2f}", f"{r['hmean_robust']:.2f}", f"{r['spared_distance']:.3f}",
                      f"{r['seconds']:.1f}", "yes" if data["chosen"].get(r["method"]) == r["settings"] else ""]
                     for r in val]), ""]
    return "\n".join(lines)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _by_method(rows):
    out = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r)
    return out


def _setting(s) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())


def _span(seeds: range) -> str:
    return f"{seeds[0]}-{seeds[-1]}"


def _x(v) -> str:
    return "" if v is None else f"{v:.1f}x"


def main():
    a = parse_args()
    if a.report_only:
        with open(os.path.splitext(a.out)[0] + ".json") as f:
            data = json.load(f)
        with open(a.out, "w") as f:
            f.write(render(data))
        return
    run = Run(a)
    run.splits()
    run.strength_check()
    for method in a.methods:
        run.validate(method)
        run.test(method)
    run.write()
    print(f"wrote {a.out} in {(time.time() - run.started) / 60:.1f} min")


if __name__ == "__main__":
    main()
