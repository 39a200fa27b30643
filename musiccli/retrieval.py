"""The retrieval protocol: relevance, block-wise ranking and metrics, one module for every caller.

Validation during training, `mtx eval` and the demo's quality checks all score through here, so
they measure the same thing.

Relevance (``caption_relevance``): the relevant tracks of a caption text are every track that
carries that exact text (main or alternative caption) and every track of the same recording
(``manifest.group_of``) as one of those. Tag-synthesised captions repeat ("A Rock track"), and a
copy of a recording in another source is the same music: neither is a wrong answer. A track's
relevant texts are the texts it is relevant for.

Query protocols: ``main`` queries each distinct main caption once; ``all`` queries every distinct
caption text, main and alternative (the Song Describer protocol). Queries are keyed by caption
text, as TTMR does, so a repeated caption is one query, not many. Music -> text ranks every distinct
caption text of the split whatever the protocol.

The same relevance decides what is never a negative in training: :func:`pair_keys` gives every
pair of a contrastive batch the keys of its caption text and of its recording, and the InfoNCE loss
masks pairs that share either (every family's trainer builds its keys here).

Ranking is block-wise: a block of queries is scored against all N items at once, so memory is
O(block x N) with the block sized in bytes (``block_rows``), never N x N. Ties count against the
target: an irrelevant item scoring the same as a relevant one ranks above it.

Metrics (``summarize``):
- ``R@K``: hit rate, 1 if any relevant item is in the top K (as clip_benchmark and LAION-CLAP);
- ``mAP@10``: true AP@10 = (1 / min(R, 10)) * sum over relevant items at rank k <= 10 of P@k;
  with one relevant item it equals 1/rank within 10;
- ``MRR``: mean 1/rank of the first relevant item (not truncated);
- ``MedR``: 1-based median rank, floor(median(0-based rank)) + 1 (LAION-CLAP, open_clip);
- ``MedR0``: 0-based median rank, median(0-based rank) (TTMR reports this convention; it uses a
  jackknife estimate, we report the plain median).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import MtxError, unknown_choice

KS = (1, 5, 10)
AP_DEPTH = 10
PROTOCOLS = ("main", "all")
BLOCK_BYTES = 64 << 20
# float32 buffers held per (query, item) cell while a block is ranked: the scores, the comparison
# result and the partition's copy.
_BYTES_PER_CELL = 4 * 3


# --------------------------------------------------------------------------- relevance
def text_key(s: str) -> int:
    """A signed 64-bit key of a string (a caption text or a recording group), equal on every rank."""
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big", signed=True)


def pair_keys(records: Sequence, texts: Sequence[str]) -> np.ndarray:
    """[B, 2] int64: the key of each pair's caption text (as used in this batch) and of its recording.

    Two pairs that share either are relevant to each other, so a contrastive loss must not treat them as
    negatives ("A Rock track" is the caption of every tag-captioned rock track; a recording can appear
    in several sources)."""
    from .manifest import group_of

    return np.array([[text_key(t), text_key(group_of(r))] for r, t in zip(records, texts)],
                    dtype=np.int64).reshape(-1, 2)


@dataclass
class Relevance:
    """Caption <-> track relevance over one set of records."""

    texts: list[str]                 # distinct caption texts, first-seen order
    queries: np.ndarray              # text -> music queries (indices into texts) under ``protocol``
    text_items: list[np.ndarray]     # per text: relevant track indices, sorted
    item_texts: list[np.ndarray]     # per track: relevant text indices, sorted
    main_item: np.ndarray            # per text: first track whose *main* caption it is, -1 if none
    protocol: str
    n_captions: int                  # captions counted with repeats (main + alternative)

    @property
    def query_items(self) -> list[np.ndarray]:
        return [self.text_items[t] for t in self.queries]


def caption_relevance(records: Sequence, protocol: str = "main") -> Relevance:
    """Relevance for ``records`` (objects with ``caption``, ``captions`` and a group, see module doc)."""
    from .manifest import group_of

    if protocol not in PROTOCOLS:
        raise unknown_choice("query protocol", protocol, PROTOCOLS)
    texts: list[str] = []
    pos: dict[str, int] = {}
    carriers: list[list[int]] = []
    n_captions = 0
    for j, r in enumerate(records):
        for c in r.captions:
            n_captions += 1
            t = pos.get(c)
            if t is None:
                t = pos[c] = len(texts)
                texts.append(c)
                carriers.append([])
            if not carriers[t] or carriers[t][-1] != j:
                carriers[t].append(j)
    by_group: dict[str, list[int]] = {}
    groups = [group_of(r) for r in records]
    for j, g in enumerate(groups):
        by_group.setdefault(g, []).append(j)
    text_items = []
    for items in carriers:
        rel = {k for j in items for k in by_group[groups[j]]}
        text_items.append(np.array(sorted(rel), dtype=np.int64))
    item_sets: list[list[int]] = [[] for _ in records]
    for t, items in enumerate(text_items):
        for j in items:
            item_sets[j].append(t)
    main_item = np.full(len(texts), -1, dtype=np.int64)
    for j, r in enumerate(records):
        t = pos[r.caption]
        if main_item[t] < 0:
            main_item[t] = j
    queries = np.flatnonzero(main_item >= 0) if protocol == "main" else np.arange(len(texts))
    return Relevance(texts=texts, queries=queries.astype(np.int64), text_items=text_items,
                     item_texts=[np.array(s, dtype=np.int64) for s in item_sets], main_item=main_item,
                     protocol=protocol, n_captions=n_captions)


def describe_protocol(protocol: str) -> str:
    queries = {"main": "each distinct main caption is one query",
               "all": "every distinct caption (main and alternative) is a query (Song Describer protocol)"}
    return (f"{queries[protocol]}; relevant = tracks carrying that exact caption text plus tracks of the same "
            f"recording (group)")


# --------------------------------------------------------------------------- ranking
@dataclass
class RankStats:
    first: np.ndarray        # [Q] 1-based rank of the best-ranked relevant item (ties against it)
    ap: np.ndarray           # [Q] AP@AP_DEPTH
    n_relevant: np.ndarray   # [Q]


def block_rows(n_items: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Queries per block so that one block's buffers stay within ``block_bytes``."""
    return max(1, int(block_bytes // max(1, n_items * _BYTES_PER_CELL)))


def rank_queries(queries: np.ndarray, items: np.ndarray, relevant: Sequence[np.ndarray],
                 block_bytes: int = BLOCK_BYTES, depth: int = AP_DEPTH) -> RankStats:
    """Rank ``items`` [N, D] for each row of ``queries`` [Q, D] by dot product; ``relevant[q]`` lists
    the relevant item indices of query ``q`` (at least one). Memory O(block x N)."""
    queries = np.asarray(queries, dtype=np.float32)
    items = np.asarray(items, dtype=np.float32)
    q_n, n = queries.shape[0], items.shape[0]
    if len(relevant) != q_n:
        raise MtxError(f"{q_n} queries but {len(relevant)} relevance lists")
    first = np.empty(q_n, dtype=np.int64)
    ap = np.empty(q_n, dtype=np.float64)
    n_rel = np.array([len(r) for r in relevant], dtype=np.int64)
    if q_n and (n_rel.min() == 0):
        raise MtxError("a retrieval query has no relevant item", hint="every query needs at least one")
    k = min(depth, n)
    step = block_rows(n, block_bytes)
    items_t = np.ascontiguousarray(items.T)
    m = np.arange(1, k + 1)
    for s in range(0, q_n, step):
        e = min(q_n, s + step)
        sim = queries[s:e] @ items_t                                  # [b, N]
        top_rel = np.full((e - s, k), -np.inf, dtype=np.float32)       # the k best relevant scores, descending
        for i, rel in enumerate(relevant[s:e]):
            scores = sim[i, rel]
            best_k = np.sort(scores)[::-1][:k]
            top_rel[i, :len(best_k)] = best_k
            sim[i, rel] = -np.inf                                      # sim now holds irrelevant scores only
        first[s:e] = (sim >= top_rel[:, :1]).sum(axis=1) + 1
        top_irr = _top(sim, k)                                         # [b, k], any order
        del sim
        # #irrelevant >= each of the top relevant scores, capped at k (past k the rank exceeds depth).
        above = (top_irr[:, None, :] >= top_rel[:, :, None]).sum(axis=2)
        ranks = m[None, :] + above                                     # pessimistic rank of the m-th relevant
        hit = np.isfinite(top_rel) & (ranks <= depth)
        ap[s:e] = np.where(hit, m[None, :] / ranks, 0.0).sum(axis=1) / np.minimum(n_rel[s:e], depth)
    return RankStats(first=first, ap=ap, n_relevant=n_rel)


def _top(x: np.ndarray, k: int) -> np.ndarray:
    """The k largest values of each row (unordered)."""
    n = x.shape[1]
    if k >= n:
        return x.copy()
    return np.partition(x, n - k, axis=1)[:, n - k:]


def summarize(stats: RankStats, ks: tuple[int, ...] = KS) -> dict[str, float]:
    r = stats.first
    if r.size == 0:
        return {**{f"R@{k}": math.nan for k in ks}, "mAP@10": math.nan, "MRR": math.nan, "MedR": math.nan,
                "MedR0": math.nan, "queries": 0}
    out: dict[str, float] = {f"R@{k}": float((r <= k).mean()) for k in ks}
    out["mAP@10"] = float(stats.ap.mean())
    out["MRR"] = float((1.0 / r).mean())
    zero_based = r - 1
    out["MedR"] = float(math.floor(np.median(zero_based)) + 1)
    out["MedR0"] = float(np.median(zero_based))
    out["queries"] = int(r.size)
    return out


def text_to_music(query_vecs: np.ndarray, audio: np.ndarray, rel: Relevance,
                  block_bytes: int = BLOCK_BYTES) -> dict[str, float]:
    """``query_vecs`` [len(rel.queries), D]: the vectors of ``rel.texts[rel.queries]``; ``audio`` [N, D]."""
    return summarize(rank_queries(query_vecs, audio, rel.query_items, block_bytes))


def music_to_text(text_vecs: np.ndarray, audio: np.ndarray, rel: Relevance,
                  block_bytes: int = BLOCK_BYTES) -> dict[str, float]:
    """Each track ranks every distinct caption text; ``text_vecs`` [len(rel.texts), D]."""
    return summarize(rank_queries(audio, text_vecs, rel.item_texts, block_bytes))


# --------------------------------------------------------------------------- tags
def tag_query_text(tag: str) -> str:
    """The text a tag is queried with: its value without the namespace
    ("mood/theme---calm" -> "calm", "genre---rock" -> "rock"; "120 bpm" stays)."""
    value = tag.rsplit("---", 1)[-1].strip()
    return value or tag


def tag_queries(tags: Sequence[str]) -> tuple[list[str], dict[str, str], list[list[int]]]:
    """(distinct query texts, tag -> query text map, per query text the tag columns it stands for).

    Tags that clean to the same text ("genre---rock" and "rock") are one query whose positives are
    the union of theirs."""
    mapping = {t: tag_query_text(t) for t in tags}
    texts: list[str] = []
    cols: dict[str, list[int]] = {}
    for i, t in enumerate(tags):
        q = mapping[t]
        if q not in cols:
            cols[q] = []
            texts.append(q)
        cols[q].append(i)
    return texts, mapping, [cols[q] for q in texts]


def merge_tag_labels(labels: np.ndarray, columns: list[list[int]]) -> np.ndarray:
    """[N, T] 0/1 labels -> [N, len(columns)]: a track is positive for a query if any of its tags is."""
    if not columns:
        return np.zeros((labels.shape[0], 0), dtype=labels.dtype)
    return np.stack([labels[:, c].max(axis=1) for c in columns], axis=1)


def tag_metrics(scores: np.ndarray, labels: np.ndarray, tags: list[str], min_positives: int = 5
                ) -> dict[str, object]:
    """Macro ROC-AUC and PR-AUC over tags (sklearn ``average='macro'``); ``scores``/``labels`` are [N, T]."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    pos = labels.sum(0)
    keep = [i for i in range(len(tags)) if pos[i] >= min_positives and pos[i] < labels.shape[0]]
    if not keep:
        return {"roc_auc": float("nan"), "pr_auc": float("nan"), "n_tags": 0, "skipped": len(tags)}
    y, s = labels[:, keep], scores[:, keep]
    return {
        "roc_auc": float(roc_auc_score(y, s, average="macro")),
        "pr_auc": float(average_precision_score(y, s, average="macro")),
        "n_tags": len(keep),
        "skipped": len(tags) - len(keep),
        "per_tag_roc_auc": {tags[i]: float(roc_auc_score(y[:, j], s[:, j])) for j, i in enumerate(keep)},
        "per_tag_ap": {tags[i]: float(average_precision_score(y[:, j], s[:, j])) for j, i in enumerate(keep)},
    }


def tag_precision_at_k(scores: np.ndarray, labels: np.ndarray, tags: list[str], k: int = 10,
                       min_positives: int = 5) -> dict[str, object]:
    """P@k of tag queries: the share of each tag query's top ``k`` tracks that carry the tag, for tags with
    >= ``min_positives`` positives (not all tracks), macro-averaged; ties are broken by track order."""
    pos = labels.sum(0)
    keep = [i for i in range(len(tags)) if pos[i] >= min_positives and pos[i] < labels.shape[0]]
    if not keep:
        return {"mean": float("nan"), "k": k, "per_tag": {}}
    top = min(k, labels.shape[0])
    per_tag = {}
    for i in keep:
        order = np.argsort(-scores[:, i], kind="stable")[:top]
        per_tag[tags[i]] = float(labels[order, i].mean())
    return {"mean": float(np.mean(list(per_tag.values()))), "k": k, "per_tag": per_tag}
