"""Pure-PyTorch operators that the official MTP code runs as CUDA extensions (see MTP_SPEC §6)."""

from training.ops.dcnv3 import DCNv3, dcnv3_core

__all__ = ["DCNv3", "dcnv3_core"]
