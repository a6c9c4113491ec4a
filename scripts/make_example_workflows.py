"""Write example_workflows/<name>.json (UI format) for every example in scripts/example_workflows.py, and
with --thumbnails run each on a real headless ComfyUI and save <name>.jpg from its images.

    .venv/bin/python -m scripts.make_example_workflows               # JSON only (needs a server start, ~15 s)
    .venv/bin/python -m scripts.make_example_workflows --thumbnails  # also run them (~1 min on 2 CPU cores)
    make examples                                                   # the same as --thumbnails

ComfyUI's template browser asks custom-node packs for `<name>.jpg` next to `<name>.json`
(frontend 1.32.9: mediaSubtype "jpg", no "-1" suffix), so that is the thumbnail's name.
"""
import argparse
import io
import json
import os

from scripts.comfy_server import REPO, ComfyServer, reset_dir
from scripts.example_workflows import all_examples
from scripts.workflow_format import add_note, api_to_ui, ui_to_api

EXAMPLES_DIR = os.path.join(REPO, "example_workflows")
THUMBNAIL_PX = 256


def ui_workflow(example, object_info):
    return add_note(api_to_ui(example.graph, object_info), example.note)


def workflow_path(name):
    return os.path.join(EXAMPLES_DIR, name + ".json")


def thumbnail_path(name):
    return os.path.join(EXAMPLES_DIR, name + ".jpg")


def write_workflow(example, object_info):
    with open(workflow_path(example.name), "w") as f:
        json.dump(ui_workflow(example, object_info), f, indent=1)


def thumbnail(rows_of_images, size=THUMBNAIL_PX):
    """One row per compared branch (e.g. original above erased), images side by side, on a square canvas."""
    from PIL import Image
    columns = max(len(images) for images in rows_of_images)
    cell = size // max(columns, len(rows_of_images))
    canvas = Image.new("RGB", (size, size), "white")
    top = (size - cell * len(rows_of_images)) // 2
    for r, images in enumerate(rows_of_images):
        for c, image in enumerate(images):
            canvas.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (c * cell, top + r * cell))
    return canvas


def run_for_thumbnail(server, example, object_info):
    from PIL import Image
    result = server.run(ui_to_api(ui_workflow(example, object_info), object_info), timeout=900)
    if result["status"] != "success":
        raise RuntimeError(f"{example.name} {result['status']}: {json.dumps(result['error'], indent=1)}")
    rows = [[Image.open(io.BytesIO(server.view(i["filename"], i["subfolder"], i["type"])))
             for i in result["outputs"][node]["images"]] for _, node in example.image_rows]
    thumbnail(rows).save(thumbnail_path(example.name), quality=85)


def write_examples(examples, thumbnails=False):
    """Write each example's workflow (and with `thumbnails` run it for its thumbnail) on one fresh server."""
    base = os.path.join(REPO, ".cache", "example-workflows-server")
    reset_dir(base)
    with ComfyServer(base) as server:
        object_info = server.object_info()
        for example in examples:  # in order: the load example reads what the save example wrote
            write_workflow(example, object_info)
            if thumbnails:
                run_for_thumbnail(server, example, object_info)
            print(f"wrote {os.path.relpath(workflow_path(example.name), REPO)}"
                  + (" and its thumbnail" if thumbnails else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thumbnails", action="store_true", help="run every example and write its thumbnail")
    args = ap.parse_args()
    write_examples(all_examples(), args.thumbnails)


if __name__ == "__main__":
    main()
