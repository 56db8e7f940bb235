"""vlmlens.zoo: small trained vision-language models that ship with vlmlens.

Also the builders of the tiny random models used in tests (see :mod:`vlmlens.testing`).
"""

from vlmlens.zoo.configs import build_config
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.processors import build_processor
from vlmlens.zoo.tokenizer import build_tokenizer

__all__ = ["ZooError", "build_config", "build_processor", "build_tokenizer"]
