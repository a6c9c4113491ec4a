"""The README's tables are the records': the supported-models table and the objectives list are rendered from
cad_core/families.py and cad_core/objectives/ (scripts/readme_tables.py), so they cannot drift apart."""
import glob
import os
import re
import sys

from scripts import readme_tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_tables_are_rendered_from_the_records():
    with open(readme_tables.README) as f:
        shown = readme_tables.in_readme(f.read())
    for name, expected in readme_tables.rendered().items():
        assert shown[name] == expected, (f"README.md's {name} differ from the records: run "
                                         f"`python -m scripts.readme_tables --write`")


def test_every_record_has_a_readme_row():
    core = readme_tables._core()
    rendered = readme_tables.rendered()
    assert all(f"| {family.display} |" in rendered["families"] for family in core.FAMILIES)
    assert all(f"- `{name}` " in rendered["objectives"] for name in core.OBJECTIVES)


def test_engine_example_runs_without_comfyui():
    """The README's engine example, run as a user would from the repository root, in a Python without ComfyUI
    on its path."""
    import re
    import subprocess
    with open(readme_tables.README) as f:
        block = re.search(r"<!-- engine example -->\n```python\n(.*?)```\n<!-- end of engine example -->", f.read(), re.S)
    assert block, "README.md has no engine example"
    done = subprocess.run([sys.executable, "-c", "import sys; assert 'comfy' not in sys.modules\n" + block.group(1)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("CAD attribution (concept_gap, scope ff.0.weight, ff.2.weight): 640 weights in 2 "
                                  "matrices;"), done.stdout
    assert "erase mask: 32 weights" in done.stdout      # global: int(0.05 * 640), all of them positive ones


# --- The README in the order a user reads it, its links, and where its measured figures come from ---------------

DOCS = os.path.join(REPO, "docs")
RESULTS = os.path.join(REPO, "benchmarks", "results")
SECTIONS = ["The two commands", "Install into ComfyUI", "The first workflow", "Nodes", "Supported models",
            "How well it works", "Performance", "The engine without ComfyUI", "Concept bank", "Development",
            "Credits and license"]
# Sections whose figures are measurements: each must be in a file under benchmarks/results/, written the same way
MEASURED_SECTIONS = ["How well it works", "Performance"]
FIGURE = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:\s?(?:s|MiB|GiB|KiB|x|%)(?!\w))?")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _documents():
    return [readme_tables.README] + sorted(glob.glob(os.path.join(DOCS, "*.md")))


def _sections(text):
    """{'## ' heading: body}; fenced code left in."""
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _slugs(text):
    """GitHub's anchors for a markdown file's headings (code blocks left out)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    seen, slugs = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?)\s*#*\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def test_readme_sections_in_reading_order():
    headings = re.findall(r"^## +(.+?)\s*$", _read(readme_tables.README), flags=re.M)
    assert headings == SECTIONS, f"README.md's sections are {headings}"
    intro = _read(readme_tables.README).split("\n## ", 1)[0]
    assert "](docs/images/demo_grid.png)" in intro, "the README opens without its picture"


def test_relative_links_resolve():
    """Every relative link and image in README.md and docs/*.md names a file that exists, and an anchor that its
    target's headings make."""
    broken = []
    for doc in _documents():
        text = re.sub(r"^```.*?^```", "", _read(doc), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
            name = os.path.relpath(doc, REPO)
            if not os.path.exists(full):
                broken.append(f"{name}: {target} (no such file)")
            elif anchor and full.endswith(".md") and anchor not in _slugs(_read(full)):
                broken.append(f"{name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_measured_figures_are_in_a_result_file():
    """The README quotes only figures that a file under benchmarks/results/ holds, written as that file writes
    them (the rendered peers table is checked against its JSON above)."""
    results = "\n".join(_read(f) for f in glob.glob(os.path.join(RESULTS, "*.md")))
    sections = _sections(_read(readme_tables.README))
    missing = []
    for title in MEASURED_SECTIONS:
        body = re.sub(r"<!-- peers table.*?<!-- end of peers table -->", "", sections[title], flags=re.S)
        body = re.sub(r"\]\([^)]*\)", "]", re.sub(r"`[^`]*`", "", body))
        figures = [f for f in FIGURE.findall(body) if re.search(r"[.,]|\D$", f)]   # plain counts ("14") aside
        assert figures, f"no figures found in '{title}'"
        missing += [f"{title}: {f}" for f in figures if f not in results]
    assert not missing, "figures no file in benchmarks/results/ holds:\n" + "\n".join(missing)


def test_commands_run_scripts_and_benchmarks_as_modules():
    stale = [f"{os.path.relpath(doc, REPO)}: {m}" for doc in _documents()
             for m in re.findall(r"python3? +(?:scripts|benchmarks)/\S+\.py", _read(doc))]
    assert not stale, "run them as modules (python -m scripts.X):\n" + "\n".join(stale)
