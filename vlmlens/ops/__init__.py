"""Free functions over (model, inputs, sites): cache, ablate, patch, steer, mask, sweep."""

from vlmlens.ops.attribution import (
    attribute_heads,
    attribute_image_patches,
    attribute_neurons,
    attribute_residual,
)
from vlmlens.ops.cache import ActivationCache, run_with_cache, select_sites
from vlmlens.ops.heads import HeadScores, attention_sinks, knockout_flow, visual_heads
from vlmlens.ops.interventions import (
    Ablate,
    AtSteps,
    BlockAttention,
    Hook,
    HookInfo,
    Intervention,
    MaskPixels,
    MaskTokens,
    Patch,
    Steer,
    applied,
    run_with_interventions,
)
from vlmlens.ops.logit_attribution import (
    FrozenNorm,
    LogitLens,
    apply_ln_to_stack,
    decompose_resid,
    frozen_norm,
    logit_attrs,
    logit_lens,
    neuron_logit_attrs,
    stack_head_results,
    token_directions,
)
from vlmlens.ops.means import RoleMean, mean_activation, top_patches
from vlmlens.ops.patching import (
    Metric,
    PatchingResult,
    logit_diff,
    patch_heads,
    patch_image_patches,
    patch_neurons,
    patch_residual,
)
from vlmlens.ops.positions import ImagePatches
from vlmlens.ops.sae import Splice, sae_features
from vlmlens.ops.store import ActivationStore, StoreInfo, write_store
from vlmlens.ops.sweep import repeat_batch, sweep

__all__ = [
    "ActivationCache",
    "run_with_cache",
    "select_sites",
    "Intervention",
    "Ablate",
    "AtSteps",
    "Patch",
    "Steer",
    "MaskPixels",
    "MaskTokens",
    "BlockAttention",
    "Hook",
    "HookInfo",
    "applied",
    "run_with_interventions",
    "mean_activation",
    "ImagePatches",
    "RoleMean",
    "top_patches",
    "sweep",
    "repeat_batch",
    "HeadScores",
    "visual_heads",
    "attention_sinks",
    "knockout_flow",
    "Splice",
    "sae_features",
    "ActivationStore",
    "StoreInfo",
    "write_store",
    "Metric",
    "PatchingResult",
    "logit_diff",
    "patch_residual",
    "patch_heads",
    "patch_neurons",
    "patch_image_patches",
    "attribute_residual",
    "attribute_heads",
    "attribute_neurons",
    "attribute_image_patches",
    "FrozenNorm",
    "LogitLens",
    "frozen_norm",
    "apply_ln_to_stack",
    "decompose_resid",
    "stack_head_results",
    "token_directions",
    "logit_attrs",
    "neuron_logit_attrs",
    "logit_lens",
]
