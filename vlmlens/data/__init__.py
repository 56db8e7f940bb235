"""vlmlens.data: POPE questions, SynthPOPE scenes, answer parsing, metrics and prompts.

Examples:
    >>> from vlmlens.data import synth_pope, parse_yes_no, pope_metrics
    >>> ds = synth_pope("adversarial", n_images=3)
    >>> preds = [parse_yes_no("Yes.") for _ in ds]
    >>> pope_metrics(preds, ds.labels).yes_ratio
    1.0
"""

from vlmlens.data.answers import PopeMetrics, parse_yes_no, pope_metrics
from vlmlens.data.objects import KINDS, SCENE_TYPES, VOCABULARY, ObjectKind, SceneType, pope_question
from vlmlens.data.pope import SPLITS, PopeDataset, PopeItem, load_pope, parse_object_name
from vlmlens.data.pope_hf import HFPopeDataset, load_pope_hf
from vlmlens.data.prompts import FAMILIES, POPE_SUFFIX, TEMPLATES, PromptTemplate, format_prompt
from vlmlens.data.render import render_scene
from vlmlens.data.scene import SceneObject, SceneTruth, load_truth
from vlmlens.data.synth import SynthConfig, SynthExport, SynthPope, load_synth, synth_pope

__all__ = [
    "FAMILIES",
    "KINDS",
    "POPE_SUFFIX",
    "SCENE_TYPES",
    "SPLITS",
    "TEMPLATES",
    "VOCABULARY",
    "HFPopeDataset",
    "ObjectKind",
    "PopeDataset",
    "PopeItem",
    "PopeMetrics",
    "PromptTemplate",
    "SceneObject",
    "SceneTruth",
    "SceneType",
    "SynthConfig",
    "SynthExport",
    "SynthPope",
    "format_prompt",
    "load_pope",
    "load_pope_hf",
    "load_synth",
    "load_truth",
    "parse_object_name",
    "parse_yes_no",
    "pope_metrics",
    "pope_question",
    "render_scene",
    "synth_pope",
]
