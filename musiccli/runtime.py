"""Device, precision, seeding and distributed initialisation.

Device order is cuda, then mps, then cpu. Precision is bf16 where the device
supports it, fp16 with a gradient scaler on older CUDA, and fp32 on the CPU.
Both can be overridden. The choice is computed once and passed around as a
:class:`Runtime`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from .errors import MtxError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    @property
    def amp_dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def use_amp(self) -> bool:
        return self.precision != "fp32"

    @property
    def needs_scaler(self) -> bool:
        return self.precision == "fp16" and self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_scaler)

    def describe(self) -> str:
        name = self.device.type
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"device {name}, precision {self.precision}"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def select_runtime(device: str = "auto", precision: str = "auto", local_rank: int | None = None) -> Runtime:
    if device not in DEVICES:
        raise MtxError(f"unknown device {device!r}", hint=f"choose one of: {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise MtxError(f"unknown precision {precision!r}", hint=f"choose one of: {', '.join(PRECISIONS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MtxError("--device cuda requested but CUDA is not available", hint="use --device auto or cpu")
    if device == "mps" and not _mps_available():
        raise MtxError("--device mps requested but MPS is not available", hint="use --device auto or cpu")
    if device == "cuda":
        rank = local_rank if local_rank is not None else int(os.environ.get("LOCAL_RANK", 0))
        dev = torch.device("cuda", rank)
    else:
        dev = torch.device(device)
    if precision == "auto":
        if dev.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            # MPS included: fp16 autocast there would train without a gradient scaler, so the
            # safe default is fp32 (``--precision`` still overrides).
            precision = "fp32"
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MtxError("this GPU does not support bf16", hint="use --precision fp16 or auto")
    return Runtime(device=dev, precision=precision)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def init_distributed(runtime: Runtime | None = None) -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if runtime is not None and runtime.device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        # Exiting with a live process group can abort in the backend's thread teardown
        # ("terminate called without an active exception"), turning a clean MtxError exit
        # into SIGABRT; tear it down first.
        atexit.register(_destroy_process_group)
    if runtime is not None and runtime.device.type == "cuda":
        torch.cuda.set_device(runtime.device)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


T = TypeVar("T")


def on_main(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give every rank its (picklable) result.

    An ``MtxError`` raised there is re-raised on every rank, instead of leaving the other
    ranks waiting forever in a collective that rank 0 never reaches.
    """
    if not info.enabled:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if info.is_main:
        try:
            box = [("ok", fn(), None)]
        except MtxError as e:
            box = [("error", e.message, e.hint)]
    dist.broadcast_object_list(box, src=0)
    kind, value, hint = box[0]
    if kind == "error":
        raise MtxError(value, hint=hint)
    return value
