"""The real Hugging Face processors of the three families, built offline.

The image processors are the PIL backends (``CLIPImageProcessorPil`` etc.): they are
what ``CLIPImageProcessor`` falls back to without torchvision, and they save and load
through ``AutoProcessor`` like the originals.

Examples:
    >>> from vlmlens.zoo.processors import build_processor
    >>> proc = build_processor("llava", image_size=32, patch_size=8)
    >>> type(proc).__name__
    'LlavaProcessor'
"""

from __future__ import annotations

from transformers import (
    CLIPImageProcessorPil,
    LlavaProcessor,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    SiglipImageProcessorPil,
)
from transformers.utils import is_torchvision_available

from vlmlens.zoo.errors import ZooError, check_family
from vlmlens.zoo.tokenizer import Family, build_tokenizer

#: CLIP's normalisation (LLaVA and Qwen2-VL use it).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: SigLIP's normalisation.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

QWEN2_VL_MERGE_SIZE = 2
QWEN2_VL_TEMPORAL_PATCH_SIZE = 2


def build_processor(
    family: Family,
    *,
    image_size: int,
    patch_size: int,
    tokenizer: PreTrainedTokenizerFast | None = None,
    max_image_size: int | None = None,
) -> ProcessorMixin:
    """Build a family's processor around a zoo tokenizer.

    Args:
        family: ``"llava"``, ``"paligemma"`` or ``"qwen2_vl"``.
        image_size: Side in pixels that images are resized to (LLaVA, PaliGemma), or
            the smallest side kept as is (Qwen2-VL, which keeps any size that is a
            multiple of ``patch_size * 2`` between ``image_size`` and ``max_image_size``).
        patch_size: The vision tower's patch size.
        tokenizer: The tokenizer; by default :func:`~vlmlens.zoo.tokenizer.build_tokenizer`.
        max_image_size: Qwen2-VL only: the largest side kept as is (default
            ``4 * image_size``). Larger images are scaled down.

    Returns:
        A ``LlavaProcessor``, ``PaliGemmaProcessor`` or ``Qwen2VLProcessor``.

    Raises:
        UnsupportedArchitectureError: For an unknown family.
        ZooError: For sizes that do not fit the patches.
    """
    check_family(family)
    tok = tokenizer if tokenizer is not None else build_tokenizer(family)
    if image_size <= 0 or patch_size <= 0:
        raise ZooError(
            f"image_size and patch_size must be positive; got {image_size} and {patch_size}."
        )
    if family == "llava":
        _check_divisible(image_size, patch_size, family)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            do_center_crop=True,
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        )
        return LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            image_token=tok.image_token,
            chat_template=tok.chat_template,
        )
    if family == "paligemma":
        _check_divisible(image_size, patch_size, family)
        image_processor = SiglipImageProcessorPil(
            size={"height": image_size, "width": image_size},
            image_mean=list(SIGLIP_MEAN),
            image_std=list(SIGLIP_STD),
        )
        # PaliGemmaProcessor reads the number of image tokens from the image processor.
        image_processor.image_seq_length = (image_size // patch_size) ** 2
        return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    if family == "qwen2_vl":
        factor = patch_size * QWEN2_VL_MERGE_SIZE
        _check_divisible(image_size, factor, family)
        largest = max_image_size if max_image_size is not None else 4 * image_size
        _check_divisible(largest, factor, family)
        image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": image_size * image_size, "longest_edge": largest * largest},
            patch_size=patch_size,
            merge_size=QWEN2_VL_MERGE_SIZE,
            temporal_patch_size=QWEN2_VL_TEMPORAL_PATCH_SIZE,
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        )
        return _qwen2_vl_processor(image_processor, tok)
    raise AssertionError("unreachable: check_family accepted an unknown family")


def _qwen2_vl_processor(
    image_processor: Qwen2VLImageProcessorPil, tokenizer: PreTrainedTokenizerFast
) -> Qwen2VLProcessor:
    if is_torchvision_available():
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import (
            Qwen2VLVideoProcessor,  # needs torchvision
        )

        video_processor = Qwen2VLVideoProcessor(
            patch_size=image_processor.patch_size,
            merge_size=image_processor.merge_size,
            temporal_patch_size=image_processor.temporal_patch_size,
            size=dict(image_processor.size),
        )
        return Qwen2VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=tokenizer.chat_template,
        )
    # Without torchvision no video processor can exist, and Qwen2VLProcessor's
    # constructor rejects a missing one although images never use it. Build the real
    # class, skipping only that check, so images and text work exactly as usual.
    proc = _ImageOnlyQwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=tokenizer.chat_template,
    )
    proc.__class__ = Qwen2VLProcessor
    return proc


class _ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    def check_argument_for_proper_class(self, argument_name, argument):  # type: ignore[no-untyped-def]
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def _check_divisible(size: int, unit: int, family: str) -> None:
    if size % unit:
        raise ZooError(
            f"{family}: image size {size} is not a multiple of {unit} pixels; "
            f"choose a multiple, e.g. {max(unit, size - size % unit)}."
        )
