"""CUDA device memory."""

from __future__ import annotations

from typing import Any

from kvbench.errors import TierUnavailable
from kvbench.tiers.base import Tier, TierBuffer

#: Left free on the device for the CUDA context, kernels' workspaces and staging.
HBM_MARGIN_BYTES = 1 << 30


def cuda_status() -> tuple[bool, str]:
    """(True, device name) or (False, why CUDA cannot be used)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is built without CUDA"
    try:
        if not torch.cuda.is_available():
            return False, "no CUDA device visible (torch.cuda.is_available() is False)"
        return True, torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001 - driver errors vary by version
        return False, f"CUDA initialisation failed: {exc}"


class TensorBuffer(TierBuffer):
    """A 1-D uint8 torch tensor on a tier."""

    def __init__(self, tier: Tier, tensor: Any) -> None:
        self.tier = tier
        self.tensor = tensor
        self.nbytes = tensor.numel()

    def close(self) -> None:
        self.tensor = None


class HbmTier(Tier):
    name = "hbm"
    device_memory = True

    def available(self) -> tuple[bool, str]:
        return cuda_status()

    @property
    def device(self) -> str:
        return "cuda"

    def free_bytes(self) -> int:
        import torch

        free, _total = torch.cuda.mem_get_info()
        return max(0, free - HBM_MARGIN_BYTES)

    def _allocate(self, nbytes: int) -> TierBuffer:
        import torch

        try:
            return TensorBuffer(self, torch.empty(nbytes, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError as exc:
            raise TierUnavailable(
                f"tier hbm could not allocate {nbytes:,} B: {str(exc).splitlines()[0]}"
            ) from None
