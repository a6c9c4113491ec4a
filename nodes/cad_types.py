"""The socket types CAD nodes pass between each other."""
from comfy_api.latest import io

CadAttribution = io.Custom("CAD_ATTRIBUTION")
CadMask = io.Custom("CAD_MASK")
CadEdit = io.Custom("CAD_EDIT")
