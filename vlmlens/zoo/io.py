"""Saving and loading zoo checkpoints in the standard ``save_pretrained`` layout.

A checkpoint folder holds ``config.json``, ``generation_config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``,
``processor_config.json`` (image processor included), ``chat_template.jinja`` where the
family has one, and ``zoo.json`` (how the model was trained and evaluated).

``AutoProcessor.from_pretrained(path)`` loads every zoo processor when torchvision is
installed. Without torchvision, transformers cannot build a Qwen2-VL processor at all
(it insists on a video processor, which needs torchvision); :func:`load_processor`
then builds the same ``Qwen2VLProcessor`` without one, which is all images need.

Examples:
    >>> from vlmlens.zoo.io import load_pretrained
    >>> model, processor = load_pretrained("toy-llava")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2VLImageProcessorPil,
)
from transformers.utils import is_torchvision_available

from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.models import MODEL_CLASSES
from vlmlens.zoo.processors import _qwen2_vl_processor

logger = logging.getLogger(__name__)

META_FILE = "zoo.json"
PROCESSOR_FILE = "processor_config.json"
_FAMILY_OF_MODEL_TYPE = {"llava": "llava", "paligemma": "paligemma", "qwen2_vl": "qwen2_vl"}


def save_processor(processor: ProcessorMixin, directory: str | Path) -> None:
    """Save a processor so that ``AutoProcessor.from_pretrained`` can read it back.

    Args:
        processor: A zoo processor.
        directory: Target folder (created if needed).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(processor, "video_processor", "absent") is not None:
        processor.save_pretrained(out)
        return
    # A Qwen2-VL processor built without torchvision: save what save_pretrained would,
    # with a video processor entry so that environments with torchvision load it normally.
    processor.tokenizer.save_pretrained(out)
    image = processor.image_processor.to_dict()
    image["image_processor_type"] = "Qwen2VLImageProcessor"
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "patch_size": image["patch_size"],
        "merge_size": image["merge_size"],
        "temporal_patch_size": image["temporal_patch_size"],
        "size": image["size"],
        "image_mean": image["image_mean"],
        "image_std": image["image_std"],
    }
    config = {"image_processor": image, "video_processor": video, "processor_class": type(processor).__name__}
    (out / PROCESSOR_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if processor.chat_template:
        (out / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")


def load_processor(path: str | Path) -> ProcessorMixin:
    """Load a saved zoo processor, offline, with or without torchvision.

    Args:
        path: A checkpoint folder.

    Returns:
        The family's real processor class.

    Raises:
        ZooError: If the folder holds no processor.
    """
    folder = Path(path)
    if not (folder / PROCESSOR_FILE).is_file():
        raise ZooError(f"No {PROCESSOR_FILE} in {folder}; is it a checkpoint folder?")
    config = json.loads((folder / PROCESSOR_FILE).read_text(encoding="utf-8"))
    if config.get("processor_class") != "Qwen2VLProcessor" or is_torchvision_available():
        return AutoProcessor.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    image = {k: v for k, v in config["image_processor"].items() if k != "image_processor_type"}
    return _qwen2_vl_processor(Qwen2VLImageProcessorPil(**image), tokenizer)


def load_model(path: str | Path) -> PreTrainedModel:
    """Load a saved zoo model in eval mode (fp32, eager attention).

    Raises:
        ZooError: If the folder holds no model of a zoo family.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ZooError(f"No config.json in {folder}; is it a checkpoint folder?")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    family = _FAMILY_OF_MODEL_TYPE.get(config.model_type)
    if family is None:
        raise ZooError(
            f"{folder} holds a {config.model_type!r} model; the zoo loads "
            f"{', '.join(_FAMILY_OF_MODEL_TYPE)}."
        )
    model = MODEL_CLASSES[family].from_pretrained(
        folder, local_files_only=True, attn_implementation="eager"
    )
    return model.eval()


def load_pretrained(name_or_path: str | Path) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a zoo model and its processor by zoo name (``"toy-llava"``) or folder.

    Raises:
        ZooError: For an unknown name or a folder without a checkpoint.
    """
    folder = resolve(name_or_path)
    return load_model(folder), load_processor(folder)


def resolve(name_or_path: str | Path) -> Path:
    """The checkpoint folder of a zoo name or an existing folder.

    Raises:
        ZooError: If it is neither a zoo name nor a folder (the message lists the names).
    """
    from vlmlens.zoo.registry import NAMES, checkpoint_path

    if isinstance(name_or_path, str) and name_or_path in NAMES:
        return checkpoint_path(name_or_path)
    folder = Path(name_or_path)
    if folder.is_dir():
        return folder
    raise ZooError(
        f"{str(name_or_path)!r} is neither a zoo model ({', '.join(NAMES)}) nor a checkpoint folder."
    )


def compact_weights(path: str | Path, dtype: Literal["float16", "bfloat16"] = "float16") -> int:
    """Store a checkpoint's floating-point weights in half precision, in place.

    ``config.json`` keeps its ``dtype`` (float32), so ``from_pretrained`` (and
    :func:`load_model`) still build a float32 model and upcast the stored weights: the
    file halves, the model computes in float32 with weights rounded to ``dtype``.

    Args:
        path: A checkpoint folder with a single ``model.safetensors``.
        dtype: Storage dtype.

    Returns:
        The new size of ``model.safetensors`` in bytes.

    Raises:
        ZooError: If the folder has no ``model.safetensors``.
    """
    file = Path(path) / "model.safetensors"
    if not file.is_file():
        raise ZooError(f"No model.safetensors in {path}; compact_weights needs a single-file checkpoint.")
    target = getattr(torch, dtype)
    with safe_open(file, framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    # Copies (not views of the mapped file), which is then overwritten.
    tensors = {k: v.to(target) if v.is_floating_point() else v.clone() for k, v in tensors.items()}
    save_file(tensors, file, metadata=metadata)
    file.chmod(0o644)
    return file.stat().st_size


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``zoo.json`` of a checkpoint folder, or ``{}`` if it has none."""
    file = Path(path) / META_FILE
    if not file.is_file():
        return {}
    return json.loads(file.read_text(encoding="utf-8"))


def write_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """Write ``zoo.json`` into a checkpoint folder (atomically: a kill leaves the old file or the new)."""
    file = Path(path) / META_FILE
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, file)
