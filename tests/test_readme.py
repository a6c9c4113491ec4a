"""The README's tables are the records': the supported-models table and the objectives list are rendered from
cad_core/families.py and cad_core/objectives/ (scripts/readme_tables.py), so they cannot drift apart."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import readme_tables  # noqa: E402


def test_readme_tables_are_rendered_from_the_records():
    with open(readme_tables.README) as f:
        shown = readme_tables.in_readme(f.read())
    for name, expected in readme_tables.rendered().items():
        assert shown[name] == expected, (f"README.md's {name} differ from the records: run "
                                         f"`python scripts/readme_tables.py --write`")


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
