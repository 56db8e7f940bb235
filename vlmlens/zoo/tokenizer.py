"""Small word-level tokenizers for the tiny test models and the toy zoo.

The zoo's models are trained from scratch on SynthPOPE questions, so a word-level
vocabulary of a few hundred entries is enough and keeps the embedding tables small.
Each family gets the special tokens its Hugging Face processor expects, wrapped in a
:class:`~transformers.PreTrainedTokenizerFast`, which every processor accepts.

Examples:
    >>> from vlmlens.zoo.tokenizer import build_tokenizer
    >>> tok = build_tokenizer("llava")
    >>> tok.convert_ids_to_tokens(tok("USER: <image>\\nIs there a cat?")["input_ids"])
    ['<s>', 'USER', ':', '<image>', '\\n', 'Is', 'there', 'a', 'cat', '?']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vlmlens.data.objects import KINDS
from vlmlens.zoo.errors import ZooError, check_family

logger = logging.getLogger(__name__)

Family = Literal["llava", "paligemma", "qwen2_vl"]
FAMILIES: tuple[Family, ...] = ("llava", "paligemma", "qwen2_vl")

UNK = "<unk>"

#: Words of the prompts, chat templates and answers used by vlmlens.
BASE_WORDS: tuple[str, ...] = (
    "USER", "ASSISTANT", ":", "?", ".", ",", "\n",
    "is", "there", "a", "an", "in", "the", "image", "yes", "no", "Yes", "No",
    "answer", "question", "using", "single", "word", "or", "phrase", "Answer", "Is",
    "You", "are", "helpful", "assistant", "system", "user", "Picture", "Video",
    "objects", "object", "picture", "photo", "this", "of", "and", "What", "what",
    "Please", "please", "Does", "does", "contain", "any", "Are", "Describe", "describe",
    "caption", "none", "nothing", "!", "'", "-", "Where", "where", "middle", "center",
)  # fmt: skip

#: Object nouns always in the vocabulary (COCO-like), besides SynthPOPE's own objects, so
#: prompts about everyday objects do not fall back to ``<unk>``.
COMMON_OBJECTS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "ball", "kite", "bat", "glove", "skateboard", "surfboard", "racket", "bottle", "glass",
    "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "pizza", "donut", "cake", "chair", "couch", "plant", "bed",
    "table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy", "hair", "drier", "toothbrush", "hydrant", "stop", "sign", "parking", "meter",
    "bench", "traffic", "light", "fire", "wine", "hot", "dog", "potted", "dining",
    "cell", "sports", "baseball", "tennis", "wine", "lamp", "tree", "house", "flower",
    "star", "heart", "moon", "sun", "circle", "square", "triangle", "ring", "cross",
    "diamond", "hexagon", "key", "fish", "hat", "shoe", "box", "pen", "pencil", "plate",
    "egg", "cone", "envelope",
    "red", "green", "blue", "yellow", "purple", "white", "black", "gray", "grey", "brown",
    "pink", "small", "large", "big", "left", "right", "top", "bottom",
)  # fmt: skip

#: PaliGemma's processor adds these on construction; they are part of the vocabulary
#: up front so that the tokenizer length (and the model's vocab size) never changes.
PALIGEMMA_EXTRA_TOKENS: tuple[str, ...] = tuple(
    [f"<loc{i:0>4}>" for i in range(1024)] + [f"<seg{i:0>3}>" for i in range(128)]
)

#: The Qwen2-VL chat template (as shipped with Qwen2-VL-*-Instruct).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: A LLaVA-1.5 style chat template ("USER: <image>\n{q} ASSISTANT:").
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}\n{% else %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True, kw_only=True)
class FamilyTokens:
    """The special tokens of one model family.

    Attributes:
        bos: Beginning-of-sequence token, or ``None`` when the family has none.
        eos: End-of-sequence token (what generation stops on).
        pad: Padding token.
        add_bos: Whether plain tokenization prepends ``bos``.
        multimodal: Named multimodal tokens (``image_token`` etc.), exposed as
            attributes of the tokenizer, e.g. ``tokenizer.image_token_id``.
        other: Further special tokens without a name.
        plain: Ordinary (non-special) tokens added after the word vocabulary.
        chat_template: Jinja chat template, or ``None``.
    """

    bos: str | None
    eos: str
    pad: str
    add_bos: bool
    multimodal: dict[str, str] = field(default_factory=dict)
    other: tuple[str, ...] = ()
    plain: tuple[str, ...] = ()
    chat_template: str | None = None

    def __post_init__(self) -> None:
        named = [t for t in (self.bos, self.eos, self.pad) if t is not None]
        everything = named + list(self.multimodal.values()) + list(self.other)
        if len(set(everything)) != len(everything):
            raise ZooError(f"Special tokens repeat: {everything}.")

    def specials(self) -> list[str]:
        """All special tokens, in vocabulary order (``<unk>`` excluded)."""
        out = [self.pad, self.eos]
        if self.bos is not None:
            out.append(self.bos)
        return out + list(self.multimodal.values()) + list(self.other)


FAMILY_TOKENS: dict[Family, FamilyTokens] = {
    "llava": FamilyTokens(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        add_bos=True,
        multimodal={"image_token": "<image>"},
        chat_template=LLAVA_CHAT_TEMPLATE,
    ),
    "paligemma": FamilyTokens(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        add_bos=True,
        multimodal={"image_token": "<image>"},
        plain=PALIGEMMA_EXTRA_TOKENS,
    ),
    "qwen2_vl": FamilyTokens(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        add_bos=False,
        multimodal={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        other=("<|im_start|>",),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    ),
}


def object_words() -> tuple[str, ...]:
    """The words of SynthPOPE's object names (:data:`vlmlens.data.KINDS`), sorted."""
    return tuple(sorted({w for name in KINDS for w in name.replace("_", " ").replace("-", " ").split()}))


def vocabulary(family: Family, *, extra_words: Iterable[str] = ()) -> list[str]:
    """The ordered vocabulary of a family's tokenizer.

    Args:
        family: Model family.
        extra_words: Further whole words to include.

    Returns:
        Tokens in id order: ``<unk>``, the family's special tokens, the base words,
        the object words, ``extra_words``, then family-specific plain tokens.

    Raises:
        UnsupportedArchitectureError: For an unknown family.
        ZooError: For an extra word containing spaces.
    """
    spec = _spec(family)
    extra = list(extra_words)
    for word in extra:
        if not word or any(ch.isspace() for ch in word) and word != "\n":
            raise ZooError(
                f"extra_words must be single words without spaces; got {word!r}. "
                "Split multi-word names first."
            )
    ordered = [UNK, *spec.specials(), *BASE_WORDS, *COMMON_OBJECTS, *object_words(), *extra]
    seen: set[str] = set()
    vocab = []
    for tok in ordered:
        if tok not in seen:
            seen.add(tok)
            vocab.append(tok)
    return vocab


def build_tokenizer(family: Family, *, extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Build the word-level fast tokenizer of a family, offline.

    Words, punctuation marks and ``"\\n"`` each become one token; other whitespace
    separates words and is dropped. Unknown words map to ``<unk>``.

    Args:
        family: ``"llava"``, ``"paligemma"`` or ``"qwen2_vl"``.
        extra_words: Further whole words to include in the vocabulary.

    Returns:
        A tokenizer with the family's special tokens (``tokenizer.image_token`` and
        ``tokenizer.image_token_id`` set) and, for Qwen2-VL and LLaVA, a chat template.

    Raises:
        UnsupportedArchitectureError: For an unknown family.
        ZooError: For a malformed extra word.
    """
    spec = _spec(family)
    vocab = vocabulary(family, extra_words=extra_words)
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    # WordPiece's decoder joins words with spaces and removes the space before punctuation.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    special = [UNK, *spec.specials()]
    backend.add_special_tokens(special)
    if spec.plain:
        backend.add_tokens(list(spec.plain))
    kwargs: dict[str, object] = {
        "tokenizer_object": backend,
        "unk_token": UNK,
        "eos_token": spec.eos,
        "pad_token": spec.pad,
        "add_bos_token": spec.add_bos,
        "add_eos_token": False,
        "extra_special_tokens": dict(spec.multimodal),
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
    }
    if spec.bos is not None:
        kwargs["bos_token"] = spec.bos
    else:
        kwargs["bos_token"] = None
    if spec.chat_template is not None:
        kwargs["chat_template"] = spec.chat_template
    tok = PreTrainedTokenizerFast(**kwargs)
    if spec.other:
        tok.add_special_tokens({"additional_special_tokens": list(spec.other)})
    return tok


def _spec(family: str) -> FamilyTokens:
    check_family(family)
    return FAMILY_TOKENS[family]  # type: ignore[index]


def describe(tokenizer: PreTrainedTokenizerFast, text: str) -> Sequence[str]:
    """Tokens of ``text`` as strings (a debugging helper)."""
    return tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
