"""cad_core: Component Attribution for Diffusion models, in plain torch (no ComfyUI imports).

    attribute()          score weights for a concept (alpha = w * dJ/dw): one call, any torch denoiser
    AttributionRequest   an attribution's settings, their defaults and checks, in one frozen record
    driver.attribute_request()   a request carried to an attribution on any backend (passes, budget, chunks)
    select_components()  pick components to erase (most positive) or amplify (most negative)
    select_protected()   the same while keeping other concepts (protect_mode subtract or drop)
    contrast()           scores for "erase A, keep B": A's share minus B's (a margin, not a veto)
    union(), protect()   combine masks; drop components another concept needs
    closed_form_edit()   a closed-form weight edit: a concept's inputs answered like a guide's, kept ones as before
    located_keys()       the matrices that hold most of a concept's positive CAD mass (where to edit)
    EraseSettings        CAD Erase Concept's settings (mode, closed form, robust training), defaults and checks
    train_robust_erase() fine-tune located weights so a concept stays erased against an attacker in the loop
    block_map()          per-block positive/negative mass and mask share, for the attribution map
    save_*/load_*        safetensors files with JSON metadata and a model fingerprint
    AttributionInfo, MaskInfo, EditInfo   how an attribution, mask or edit was made, typed (the files' JSON)
    verify_ablation(), faithfulness()   compare predicted with measured effects
"""
from .attribution import (Attribution, GradientAccumulator, GradientCapture, ModuleCapture, ParameterGradientCapture,
                          attribute, seeded_noise, sum_attributions)
from .attribution_info import AttributionInfo
from .block_map import block_map
from .closed_form import closed_form_delta, closed_form_edit, located_keys
from .blocks import block_of, short_block_name
from .edit_info import EditInfo
from .erase_settings import ERASE_MODES, EraseSettings
from .errors import CADError, CADFileError
from .families import FAMILIES, GENERIC, ModelFamily, detect_family
from .fingerprint import ModelFingerprints, model_fingerprint, require_same_model
from .mask import Mask, protect, scale_selected, union
from .mask_info import MaskInfo
from .noise import FlowMatching, VarianceExploding
from .objectives import OBJECTIVES, Objective, objective_named
from .request import AttributionRequest
from .robust_erase import RobustEraseInputs, RobustSchedule, train_robust_erase
from .scopes import SCOPE_PRESETS, resolve_scope
from .selection import GRANULARITIES, PROTECT_MODES, contrast, select_components, select_protected
from .serialization import load_attribution, load_mask, read_kind, save_attribution, save_mask
from .trajectory import SCHEDULES, TrajectoryPlan
from .verify import faithfulness, predicted_change, random_mask, verify_ablation
from .version import FORMAT_VERSION, PACK_VERSION

__version__ = PACK_VERSION
