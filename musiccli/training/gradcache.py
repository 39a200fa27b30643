"""Cached-representation gradient accumulation (GradCache) for contrastive losses.

Plain gradient accumulation splits a batch into sub-batches and sums their losses, which
changes InfoNCE: each sub-batch sees only its own negatives. GradCache keeps the full
batch's loss and still bounds activation memory by one sub-batch:

1. embed every sub-batch without a graph (saving the RNG state before each, so dropout
   can be replayed);
2. compute the full-batch loss on the cached representations, as a leaf that requires
   grad, and backpropagate it: this gives d loss / d representation for every row (and
   the gradients of whatever the loss itself owns: a temperature, an audio tower);
3. embed each sub-batch again with its saved RNG state, now with a graph, and
   backpropagate its slice of the cached gradient into the encoder.

The encoder's gradients then equal those of one large batch (up to float summation
order). Under DDP every sub-batch but the last runs inside ``no_sync()``, so gradients
are all-reduced once; cross-rank negatives come from the loss's own gather.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

Encode = Callable[[Sequence[str]], torch.Tensor]
LossOf = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def split_chunks(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    """``items`` cut into ``n`` contiguous sub-batches as equal as possible (none empty)."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def cached_backward(encode: Encode, chunks: Sequence[Sequence[str]], loss_of: LossOf,
                    backward: Callable[[torch.Tensor], None], device: torch.device,
                    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
                    before_backward: Callable[[torch.Tensor], None] | None = None,
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """One large-batch backward in sub-batches; returns the (detached) full-batch loss and its parts.

    ``encode(texts)`` must return float representations; ``loss_of(reps)`` the full-batch loss;
    ``backward(loss)`` runs the (possibly scaled) backward of a loss.
    """
    states, reps = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state(device))
            reps.append(encode(chunk))
    cached = torch.cat(reps).detach().requires_grad_(True)
    loss, parts = loss_of(cached)
    if before_backward is not None:
        before_backward(loss)
    backward(loss)
    if cached.grad is None:   # the loss does not depend on the text side (never for the registered losses)
        return loss.detach(), parts
    grads = cached.grad.split([len(c) for c in chunks])
    end_state = _rng_state(device)
    for i, (chunk, grad) in enumerate(zip(chunks, grads)):
        _set_rng_state(states[i], device)
        last = i == len(chunks) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with ctx:
            z = encode(chunk)
            z.backward(grad.to(z.dtype))
    _set_rng_state(end_state, device)
    return loss.detach(), parts
