"""The list of nodes ComfyUI registers for this pack."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension

from .apply_node import ApplyCADMask
from .attribute_node import CADAttribute
from .demo_model_node import CADDemoModel
from .erase_concept_node import CADEraseConcept
from .export_node import CADLoadEdit, CADSaveEditAsLoRA, CADSaveMaskAsLoRA
from .file_nodes import CADLoadAttribution, CADLoadMask, CADSaveAttribution, CADSaveMask
from .map_node import CADAttributionMap
from .mask_nodes import CADAmplifyMask, CADCombineMasks, CADEraseMask
from .sum_node import CADSumAttributions
from .verify_node import CADVerify

NODES = [CADAttribute, CADEraseMask, CADAmplifyMask, ApplyCADMask, CADEraseConcept, CADCombineMasks,
         CADSumAttributions, CADVerify, CADAttributionMap, CADSaveAttribution, CADLoadAttribution, CADSaveMask,
         CADLoadMask, CADSaveMaskAsLoRA, CADSaveEditAsLoRA, CADLoadEdit, CADDemoModel]


class CADExtension(ComfyExtension):
    @override
    async def get_node_list(self):
        return NODES
