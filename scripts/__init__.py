"""The pack's tooling (demo, example workflows, concept bank, server helpers), run from the pack's folder as
modules: `python -m scripts.<name>`. ComfyUI and the pack are found by scripts.pack_bootstrap, the one place
that touches sys.path."""
