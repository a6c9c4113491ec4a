"""Convert between ComfyUI's two workflow formats with the server's /object_info as the schema.

UI format (what the frontend saves and example_workflows/ ships): nodes with widgets_values in widget
order, links as [id, from_node, from_slot, to_node, to_slot, type]. API format (what POST /prompt
takes): {id: {"class_type", "inputs": {name: value or [from_id, from_slot]}}}.
"""
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Nodes that exist only in the frontend (it never sends them to the server), so object_info lacks them.
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote"}


def _inputs(info: dict):
    """(name, spec, is_widget) in the order the frontend creates them: required, then optional."""
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            kind = spec[0]
            yield name, spec, isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec: list) -> bool:
    """Whether the frontend adds a "control after generate" widget after this one (frontend 1.32.9's
    useIntWidget: the input's control_after_generate flag, or by default any INT named seed/noise_seed)."""
    opts = spec[1] if len(spec) > 1 else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def _widget_values(info: dict, inputs: dict) -> list:
    values = []
    for name, spec, is_widget in _inputs(info):
        if not is_widget or isinstance(inputs.get(name), list):
            continue
        opts = spec[1] if len(spec) > 1 else {}
        values.append(inputs.get(name, opts.get("default")))
        if _has_control_widget(name, spec):  # the frontend stores the control's value next to the seed
            values.append("fixed")
    return values


def _estimated_size(info: dict, inputs: list, widget_count: int) -> list:
    """Roughly the frontend's own minimum node size, so the layout below leaves no overlaps."""
    slots = max(sum(1 for i in inputs if "widget" not in i), len(info["output"]))
    if info.get("output_node") and not info["output"]:  # e.g. PreviewImage: room for the images
        return [320, 320]
    return [320, max(60, 14 + 20 * slots + 24 * widget_count)]


def _room_below(info: dict) -> int:
    """Space under a node for what it grows to show after a run, so it does not cover the next one."""
    room = 60
    if info.get("category", "").startswith("CAD"):  # the pack's summary widgets
        room += 200
    if info.get("output_node") and info["output"]:  # a node that previews its own images (e.g. the map)
        room += 300
    return room


def api_to_ui(api: dict, object_info: dict, titles: dict | None = None) -> dict:
    """A UI-format workflow for an API graph, laid out left to right by dependency depth."""
    depth = {}

    def depth_of(node_id):
        if node_id not in depth:
            links = [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((depth_of(str(src)) for src in links), default=-1)
        return depth[node_id]

    column_bottom, nodes, links = {}, [], []
    outputs = {nid: {} for nid in api}
    for nid in sorted(api, key=int):
        col = depth_of(nid)
        info = object_info[api[nid]["class_type"]]
        inputs = []
        for name, spec, is_widget in _inputs(info):
            value = api[nid]["inputs"].get(name)
            if isinstance(value, list):
                link_id = len(links) + 1
                src, slot = str(value[0]), int(value[1])
                link_type = object_info[api[src]["class_type"]]["output"][slot]
                links.append([link_id, int(src), slot, int(nid), len(inputs), link_type])
                outputs[src].setdefault(slot, []).append(link_id)
                inputs.append({"name": name, "type": spec[0] if not is_widget else spec[0], "link": link_id,
                               **({"widget": {"name": name}} if is_widget else {})})
            elif not is_widget:
                inputs.append({"name": name, "type": spec[0], "link": None})
        widgets_values = _widget_values(info, api[nid]["inputs"])
        size = _estimated_size(info, inputs, len(widgets_values))
        top = column_bottom.get(col, 40)
        column_bottom[col] = top + size[1] + _room_below(info)
        node = {"id": int(nid), "type": api[nid]["class_type"], "pos": [40 + 360 * col, top],
                "size": size, "flags": {}, "order": 0, "mode": 0, "inputs": inputs,
                "properties": {"Node name for S&R": api[nid]["class_type"]}, "widgets_values": widgets_values}
        title = (titles or {}).get(nid) or api[nid].get("_meta", {}).get("title")
        if title:
            node["title"] = title
        nodes.append(node)
    for node in nodes:
        info = object_info[node["type"]]
        node["outputs"] = [{"name": name, "type": kind, "links": outputs[str(node["id"])].get(i, [])}
                           for i, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    for order, node in enumerate(sorted(nodes, key=lambda n: depth_of(str(n["id"])))):
        node["order"] = order
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API graph ComfyUI's frontend would queue for a UI-format workflow."""
    link_source = {link[0]: (str(link[1]), link[2]) for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONTEND_ONLY_NODES:  # muted / bypassed / notes
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise ValueError(f"Node type '{node['type']}' is not installed on this server.")
        linked = {i["name"]: link_source[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = iter(node.get("widgets_values", []))
        inputs = {}
        for name, spec, is_widget in _inputs(info):
            if name in linked:
                inputs[name] = list(linked[name])
                continue
            if is_widget:
                try:
                    inputs[name] = next(values)
                except StopIteration:
                    break
                if _has_control_widget(name, spec):
                    next(values, None)
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                "_meta": {"title": node.get("title", info.get("display_name", node["type"]))}}
    return api


def add_note(ui: dict, markdown: str, width: int = 360, height: int = 220) -> dict:
    """`ui` with a Markdown note above its first column (the frontend renders it; queuing skips it)."""
    node_id = ui["last_node_id"] + 1
    left = min(n["pos"][0] for n in ui["nodes"])
    top = min(n["pos"][1] for n in ui["nodes"])
    ui["nodes"].append({"id": node_id, "type": "MarkdownNote", "pos": [left, top - height - 60], "size": [width, height],
                        "flags": {}, "order": len(ui["nodes"]), "mode": 0, "inputs": [], "outputs": [],
                        "properties": {}, "widgets_values": [markdown], "color": "#432", "bgcolor": "#653"})
    ui["last_node_id"] = node_id
    return ui
