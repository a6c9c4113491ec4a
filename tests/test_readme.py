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
