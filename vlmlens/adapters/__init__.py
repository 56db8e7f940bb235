"""Family adapters: one short data file per VLM family, registered by architecture."""

from vlmlens.adapters import llava, paligemma, qwen2_vl
from vlmlens.adapters.base import Adapter, BlockSpec, TowerSpec
from vlmlens.adapters.registry import get_adapter, register, supported_architectures

for _adapter in (llava.ADAPTER, paligemma.ADAPTER, paligemma.PALIGEMMA2, qwen2_vl.ADAPTER):
    register(_adapter)

__all__ = ["Adapter", "BlockSpec", "TowerSpec", "get_adapter", "register", "supported_architectures"]
