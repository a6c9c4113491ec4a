"""ComfyUI adapters for cad_core. Node modules validate, call cad_core (and the bridge package for ComfyUI
mechanics), return."""
