"""Training pairs (caption, standardised audio vector) streamed from the HDF5 store.

Everything random here is a pure function of (seed, epoch, index), never of a
global RNG: the per-epoch permutation and the caption chosen for each item. So the
data position ``(epoch, batch index)`` is all a checkpoint needs to resume exactly.
Audio rows are read per batch (``EmbeddingStore.rows`` sorts positions for h5py),
so the store is never loaded whole.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from ..errors import MtxError, unknown_choice
from ..manifest import Record
from ..retrieval import pair_keys
from ..store import EmbeddingStore
from .textrep import TEXT_REPS, draw_text

log = logging.getLogger(__name__)


def _item_key(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class Split:
    """Records of one split that have embeddings, with their store positions."""

    name: str
    records: list[Record]
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.records)


def split_pairs(records: Sequence[Record], store: EmbeddingStore, split: str) -> Split:
    """The records of ``split`` that exist in the store (the others are dropped and counted)."""
    wanted = [r for r in records if r.split == split]
    kept = [r for r in wanted if store.has(r.id)]
    dropped = len(wanted) - len(kept)
    if dropped:
        log.info("%s split: %d of %d records have no embedding and are skipped", split, dropped, len(wanted))
    return Split(split, kept, store.positions([r.id for r in kept]))


class PairDataset(Dataset):
    """(caption, standardised audio vector) pairs for one epoch at a time.

    ``alt_captions`` take part: each epoch picks one of ``[caption, *alt_captions]``
    per item, deterministically from (seed, epoch, index). Other text representations
    (``text_rep``: tag, stochastic, mixed; see :mod:`.textrep`) draw from the same key.
    """

    def __init__(self, split: Split, store: EmbeddingStore, mean: np.ndarray, std: np.ndarray, seed: int,
                 use_alt_captions: bool = True, text_rep: str = "caption") -> None:
        self.split = split
        self.store = store
        self.mean = mean.astype(np.float32)
        self.std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
        self.seed = seed
        self.use_alt = use_alt_captions
        if text_rep not in TEXT_REPS:
            raise unknown_choice("text representation", text_rep, TEXT_REPS)
        self.text_rep = text_rep
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def caption(self, index: int, epoch: int | None = None) -> str:
        r = self.split.records[index]
        key = _item_key(self.seed, self.epoch if epoch is None else epoch, index)
        if self.text_rep != "caption":
            return draw_text(r, self.text_rep, key, self.use_alt)
        caps = r.captions if self.use_alt else [r.caption]
        if len(caps) == 1:
            return caps[0]
        return caps[key % len(caps)]

    def standardize(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.mean) / self.std

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        raw = self.store.rows([self.split.positions[index]])[0]
        return self.caption(index), self.standardize(raw)

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[list[str], np.ndarray]:
        """One batch with a single (sorted) HDF5 read instead of one read per item."""
        idx = np.asarray(indices, dtype=np.int64)
        raw = self.store.rows(self.split.positions[idx])
        return [self.caption(int(i)) for i in idx], self.standardize(raw)

    def pair_keys(self, indices: Sequence[int] | np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """[B, 2] int64: the key of each pair's caption text (as used in this batch) and of its recording.

        The contrastive loss must not treat two pairs that share either as negatives of each other
        ("A Rock track" is the caption of every tag-captioned rock track; a recording can appear
        in several sources)."""
        return pair_keys([self.split.records[int(i)] for i in indices], texts)


class EpochSampler:
    """Seeded permutation per epoch, cut into batches and sharded across ranks.

    With several ranks each global batch of ``batch_size * world_size`` items is split
    into equal per-rank slices, and an incomplete last global batch is dropped so that
    every rank contributes the same number of negatives to the gathered InfoNCE.
    On one rank a last batch of at least 2 items is kept (a batch of one has no negatives).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise MtxError(f"batch size must be at least 1, got {batch_size}")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __len__(self) -> int:
        global_bs = self.batch_size * self.world_size
        full, rest = divmod(self.n, global_bs)
        return full + (1 if self.world_size == 1 and rest >= 2 else 0)

    def batches(self, epoch: int) -> list[np.ndarray]:
        perm = self.permutation(epoch)
        global_bs = self.batch_size * self.world_size
        out = []
        for b in range(len(self)):
            chunk = perm[b * global_bs:(b + 1) * global_bs]
            out.append(chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])
        return out
