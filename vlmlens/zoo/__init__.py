"""vlmlens.zoo: small trained vision-language models that ship with vlmlens.

Three toys, one per family, trained from scratch on SynthPOPE on a CPU:
``toy-llava``, ``toy-paligemma`` and ``toy-qwen2vl``. Also the builders of the tiny
random models used in tests (see :mod:`vlmlens.testing`). Zoo v2, the controlled fusion
experiment (three arms that differ only in fusion), is trained by
:func:`vlmlens.zoo.fusion.train_fusion`.

Examples:
    >>> from vlmlens.zoo import load_pretrained
    >>> model, processor = load_pretrained("toy-llava")  # doctest: +SKIP
"""

from vlmlens.zoo.configs import build_config
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.io import load_model, load_pretrained, load_processor, save_processor
from vlmlens.zoo.processors import build_processor
from vlmlens.zoo.registry import ZOO, ZooEntry, checkpoint_path
from vlmlens.zoo.tokenizer import build_tokenizer

__all__ = [
    "ZOO",
    "ZooEntry",
    "ZooError",
    "build_config",
    "build_processor",
    "build_tokenizer",
    "checkpoint_path",
    "load_model",
    "load_pretrained",
    "load_processor",
    "save_processor",
]
