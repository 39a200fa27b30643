"""The training loop's view of torch.distributed: a few collectives, all no-ops on one process.

Every method here is a collective when several ranks run: all ranks must call it in the
same order. Keeping them in one small object makes that contract visible, and lets the
loop be tested on one process without a process group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

from ..runtime import DistInfo, Runtime, capture_rng_state, on_main

T = TypeVar("T")


class Collective:
    def __init__(self, info: DistInfo, device: torch.device) -> None:
        self.info = info
        self.device = device

    @property
    def enabled(self) -> bool:
        return self.info.enabled

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def decide(self, fn: Callable[[], T]) -> T:
        """``fn`` on rank 0; every rank gets its result (or its MtxError)."""
        return on_main(self.info, fn)

    def gather_rng(self) -> list[dict[str, Any]] | None:
        """Every rank's RNG state, on rank 0; None without DDP."""
        if not self.enabled:
            return None
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(capture_rng_state(), out, dst=0)
        return out

    def average_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average gradients of parameters that live outside DDP (a learnable temperature, an audio head)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world_size

    def wrap(self, model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
        """``model`` under DDP when several ranks run, else ``model`` itself."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
