"""Node help where users look for it: ComfyUI's frontend shows a custom node's help page in its node help panel,
fetched from /extensions/<pack>/docs/<NodeId>/<locale>.md and then /extensions/<pack>/docs/<NodeId>.md, i.e.
WEB_DIRECTORY/docs/ (web/docs/ here). Every node of the entrypoint has a page; each page lists exactly the inputs
and outputs of the node's schema (in schema order) and no name that no schema has any more; every combo option
is named; every input and output has a tooltip and every node a description. The server test fetches each page
the way the frontend does, with the pack folder name taken from /object_info's python_module."""
import os
import re

import pytest

from cad_pack.nodes.extension import NODES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "web", "docs")

SCHEMAS = {node.define_schema().node_id: node.define_schema() for node in NODES}
# Backticked lower-case words a page may use that are no CAD node's input, output or option: name -> what it is.
OTHER_TERMS = {"diff": "the LoRA key Save CAD Mask as LoRA writes",
               "strength_model": "the strength input of core's LoraLoader / LoraLoaderModelOnly"}
# Combo inputs whose options are the files on disk, not words a page can name.
FILE_COMBOS = {"file"}


def page_path(node_id):
    return os.path.join(DOCS, f"{node_id}.md")


def read_page(node_id):
    with open(page_path(node_id), encoding="utf-8") as f:
        return f.read()


def sections(text):
    """{heading: body} of the '## ' sections, code blocks left out."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.M)
    return {heading: body for heading, body in zip(parts[1::2], parts[2::2])}


def listed_names(body):
    """Names a section's bullets start with: '- `a` ...', '- `a`, `b` ...' and '- `a` (...) and `b` (...)' list
    each backticked name before the bullet's first other word, parentheses skipped."""
    names = []
    for line in body.splitlines():
        if not line.startswith("- `"):
            continue
        head = re.sub(r"\([^)]*\)", "", line[2:])           # '`width` (default 1024) and `height`' -> names
        match = re.match(r"\s*((?:`[^`]+`(?:\s*,\s*|\s+and\s+|\s*)?)+)", head)
        names += re.findall(r"`([^`]+)`", match.group(1))
    return names


def input_names(schema):
    return [i.id for i in schema.inputs]


def output_names(schema):
    return [o.display_name or o.io_type for o in schema.outputs]


def combo_options(schema):
    return {i.id: list(i.options) for i in schema.inputs if i.io_type == "COMBO" and i.id not in FILE_COMBOS}


def backticked_words(text):
    """Identifier-like words in backticks (`protect_weight`, `ff`), code blocks left out: file names, paths,
    regexes and numbers are not candidates for stale input names."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return set(w for w in re.findall(r"`([^`\s]+)`", text) if re.fullmatch(r"[a-z][a-z0-9_]*", w))


ALL_INPUTS = {name for schema in SCHEMAS.values() for name in input_names(schema)}
ALL_OPTIONS = {o for schema in SCHEMAS.values() for options in combo_options(schema).values() for o in options}


def test_every_node_has_a_help_page_and_every_page_a_node():
    assert SCHEMAS, "the entrypoint lists no nodes"
    pages = {f[:-3] for f in os.listdir(DOCS) if f.endswith(".md")}
    assert not set(SCHEMAS) - pages, f"nodes without a help page in web/docs/: {sorted(set(SCHEMAS) - pages)}"
    assert not pages - set(SCHEMAS), f"help pages of no node (renamed or removed?): {sorted(pages - set(SCHEMAS))}"


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_page_title_is_the_display_name(node_id):
    first = read_page(node_id).splitlines()[0]
    assert first == f"# {SCHEMAS[node_id].display_name}", f"{node_id}.md starts with {first!r}"


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_page_lists_exactly_the_schema_inputs_and_outputs(node_id):
    schema, found = SCHEMAS[node_id], sections(read_page(node_id))
    for heading, expected in (("Inputs", input_names(schema)), ("Outputs", output_names(schema))):
        assert heading in found, f"{node_id}.md has no '## {heading}' section"
        listed = listed_names(found[heading])
        if not expected:
            assert not listed and found[heading].strip().startswith("None"), \
                f"{node_id} has no {heading.lower()}; its page lists {listed}"
            continue
        assert listed == expected, (f"{node_id}.md '## {heading}' lists {listed}; the schema has {expected} "
                                    f"(missing: {[n for n in expected if n not in listed]}, not in the schema: "
                                    f"{[n for n in listed if n not in expected]}; keep the schema's order)")


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_page_names_no_stale_input_and_every_option(node_id):
    schema, text = SCHEMAS[node_id], read_page(node_id)
    words = backticked_words(text)
    for name in input_names(schema):
        assert f"`{name}`" in text, f"{node_id}.md never names its input `{name}`"
    defaults = {i.default for i in schema.inputs if isinstance(getattr(i, "default", None), str)}
    known = ALL_INPUTS | ALL_OPTIONS | set(output_names(schema)) | set(OTHER_TERMS) | defaults
    stale = sorted(words - known)
    assert not stale, (f"{node_id}.md names {stale} in backticks, which no CAD node has as an input or option "
                       f"(renamed or removed?); update the page, or add a real term to OTHER_TERMS")
    for name, options in combo_options(schema).items():
        missing = [o for o in options if f"`{o}`" not in text]
        assert not missing, f"{node_id}.md does not explain {name}'s options {missing}"


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_node_has_a_description_and_every_socket_a_tooltip(node_id):
    schema = SCHEMAS[node_id]
    assert (schema.description or "").strip(), f"{node_id} has no description"
    for i in schema.inputs:
        assert (i.tooltip or "").strip(), f"{node_id}: input {i.id} has no tooltip"
    for name, o in zip(output_names(schema), schema.outputs):
        assert (o.tooltip or "").strip(), f"{node_id}: output {name} has no tooltip"


# A tooltip says what a socket does and its useful range, in one line; explanations and measured figures (which go
# stale) belong on the help page, next to the result file under benchmarks/results/ that holds them.
TOOLTIP_MAX_CHARS = 160
MEASURED_CLAIM = re.compile(r"\d\s*(?:[KMGT]i?B)\b|Jaccard|benchmarks/results|README", re.I)
ABBREVIATIONS = re.compile(r"\b(?:e\.g|i\.e|etc|vs)\.", re.I)


def sentence_count(text):
    """Sentence ends in a tooltip: '.', '!' or '?' before a space or the end (e.g./i.e. are not ends)."""
    return len(re.findall(r"[.!?](?=\s|$)", ABBREVIATIONS.sub("", text)))


def tooltip_problems(where, tooltip):
    tooltip = tooltip or ""
    problems = []
    if "\n" in tooltip.strip():
        problems.append(f"{where}: tooltip has several lines")
    if len(tooltip) > TOOLTIP_MAX_CHARS:
        problems.append(f"{where}: tooltip has {len(tooltip)} characters (at most {TOOLTIP_MAX_CHARS})")
    if sentence_count(tooltip) > 1:
        problems.append(f"{where}: tooltip has {sentence_count(tooltip)} sentences (one line, one sentence)")
    if MEASURED_CLAIM.search(tooltip):
        problems.append(f"{where}: tooltip quotes a measurement ({MEASURED_CLAIM.search(tooltip).group(0)!r}); "
                        f"put it on web/docs/<NodeId>.md with its result file")
    return problems


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_every_tooltip_is_one_short_line_without_measurements(node_id):
    schema = SCHEMAS[node_id]
    problems = [p for i in schema.inputs for p in tooltip_problems(f"{node_id}.{i.id}", i.tooltip)]
    problems += [p for name, o in zip(output_names(schema), schema.outputs)
                 for p in tooltip_problems(f"{node_id} output {name}", o.tooltip)]
    assert not problems, "\n".join(problems)


def test_the_tooltip_check_catches_long_and_measured_tooltips():
    assert not tooltip_problems("x", "The concept, e.g. CLIPTextEncode('a photo of a cat').")
    assert tooltip_problems("x", "Timesteps visited. Fewer give a different mask.")
    assert tooltip_problems("x", "Flux's ff scope needs ~58 GB unchunked.")
    assert tooltip_problems("x", "Masks from 20 steps overlap those from 50 with a Jaccard index of 0.75.")
    assert tooltip_problems("x", "a" * (TOOLTIP_MAX_CHARS + 1))
    assert tooltip_problems("x", "first line\nsecond line")


def test_the_checks_catch_a_stale_page():
    """The parsers above find what a broken page gets wrong (so the tests can fail)."""
    page = read_page("CADEraseMask").replace("`protect_weight`", "`keep_weight`")
    listed = listed_names(sections(page)["Inputs"])
    assert "keep_weight" in listed and "protect_weight" not in listed
    assert "keep_weight" in backticked_words(page) - ALL_INPUTS
    assert listed_names("- `width` (default 1024) and `height` (default 512): size\n- `a`, `b` (x): y") == \
        ["width", "height", "a", "b"]


@pytest.mark.server
def test_server_serves_every_page_where_the_frontend_looks(comfy_server):
    """The frontend's NodeHelpService: pack = python_module.split('.')[1] without '@version' when python_module
    starts with 'custom_nodes.'; it fetches /extensions/<pack>/docs/<NodeId>/<locale>.md, then
    /extensions/<pack>/docs/<NodeId>.md (frontends 1.32.9 and 1.49.6 alike)."""
    info = comfy_server.object_info()
    for node_id in sorted(SCHEMAS):
        module = info[node_id]["python_module"]
        parts = module.split(".")
        assert len(parts) >= 2 and parts[0] == "custom_nodes", f"{node_id}: python_module {module!r}"
        pack = parts[1].split("@")[0]
        status, body = comfy_server.client.request(f"/extensions/{pack}/docs/{node_id}.md")
        assert status == 200, f"GET /extensions/{pack}/docs/{node_id}.md returned {status}"
        assert body.decode("utf-8") == read_page(node_id)
    status, _ = comfy_server.client.request(f"/extensions/{pack}/docs/NoSuchNode.md")
    assert status == 404
