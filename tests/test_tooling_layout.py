"""The tooling is a package: scripts and benchmarks import the pack through the one bootstrap
(scripts/pack_bootstrap.py), run as `python -m scripts.<name>` / `python -m benchmarks.<name>`, and nothing else
edits sys.path. The toy world lives in one place (nodes/toyworld)."""
import ast
import os
import subprocess
import sys

from conftest import REPO

BOOTSTRAP = os.path.join("scripts", "pack_bootstrap.py")
OWN_FOLDERS = ("cad_core", "nodes", "scripts", "benchmarks", "tests")


def python_files():
    yield "__init__.py"
    for folder in OWN_FOLDERS:
        for root, dirs, files in os.walk(os.path.join(REPO, folder)):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(root, name), REPO)


def sys_path_edits(source: str) -> list[int]:
    """Lines that change sys.path: a call of one of its mutating methods, or an assignment to it or a slice of it."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("insert", "append", "extend", "remove", "pop", "clear") \
                and ast.unparse(node.func.value) == "sys.path":
            lines.append(node.lineno)
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if ast.unparse(target.value if isinstance(target, ast.Subscript) else target) == "sys.path":
                    lines.append(node.lineno)
    return lines


def test_the_detector_sees_every_kind_of_sys_path_edit():
    source = ("import sys\nsys.path.insert(0, 'a')\nsys.path.append('b')\nsys.path[:] = []\n"
              "sys.path[0:0] = ['c']\nsys.path = ['d']\nsys.path += ['e']\nprint(sys.path[0])\n")
    assert sorted(sys_path_edits(source)) == [2, 3, 4, 5, 6, 7]


def test_only_the_bootstrap_edits_sys_path():
    offenders = {path: sys_path_edits(open(os.path.join(REPO, path), encoding="utf-8").read())
                 for path in python_files() if path != BOOTSTRAP}
    offenders = {path: lines for path, lines in offenders.items() if lines}
    assert not offenders, f"sys.path edited outside {BOOTSTRAP}: {offenders}"
    assert sys_path_edits(open(os.path.join(REPO, BOOTSTRAP), encoding="utf-8").read()), \
        "the bootstrap no longer puts ComfyUI on sys.path: update this test"


def test_tooling_runs_as_modules_from_the_repo_root():
    """A script and a benchmark start with `python -m` from the pack's folder, nothing else on sys.path
    (PYTHONPATH cleared): their imports of each other and of the pack go through the package and the bootstrap."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for module in ("scripts.readme_tables", "benchmarks.fingerprint_cost"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, (module, done.stderr[-2000:])


def test_the_toy_world_lives_in_one_place():
    toy = os.path.join(REPO, "nodes", "toyworld")
    for name in ("model.py", "world.py", "scorers.py", "evaluate.py", "train.py", "shape_classifier.safetensors"):
        assert os.path.isfile(os.path.join(toy, name)), name
    elsewhere = [path for path in python_files()
                 if "toyworld" in os.path.basename(os.path.dirname(path)) and not path.startswith("nodes")]
    assert not elsewhere, elsewhere
