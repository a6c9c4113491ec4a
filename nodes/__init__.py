"""ComfyUI adapters for cad_core. Node modules validate, call cad_core (via comfy_bridge), return."""
