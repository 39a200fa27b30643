"""Retrieval metrics, parameterised by direction and tested against naive reference code.

Conventions (see DATASETS.md): R@K is a hit rate; median rank is **1-based**;
with one relevant item mAP@10 = 1/rank if rank <= 10 else 0; MRR = mean 1/rank.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def ranks_of_targets(sim: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of ``targets[i]`` in row ``i`` of ``sim`` (higher = better).

    Ties count against the target (pessimistic), so a constant scorer is not rewarded.
    """
    target_scores = sim[np.arange(sim.shape[0]), targets]
    return (sim >= target_scores[:, None]).sum(axis=1).astype(np.int64)


def ranks_multi(sim: np.ndarray, relevant: list[np.ndarray]) -> np.ndarray:
    """1-based rank of the best-ranked relevant item per row (several relevant items allowed).

    Ties count against the target, as in ``ranks_of_targets``: irrelevant items scoring the
    same as the best relevant one rank above it (relevant items tied with it do not).
    """
    out = np.empty(sim.shape[0], dtype=np.int64)
    for i, rel in enumerate(relevant):
        best = sim[i, rel].max()
        tied_irrelevant = int((sim[i] == best).sum()) - int((sim[i, rel] == best).sum())
        out[i] = int((sim[i] > best).sum()) + tied_irrelevant + 1
    return out


def summarize_ranks(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    out["mAP@10"] = float(np.where(ranks <= 10, 1.0 / ranks, 0.0).mean())
    out["MRR"] = float((1.0 / ranks).mean())
    out["MedR"] = float(np.median(ranks))
    return out


def retrieval_metrics(text: np.ndarray, audio: np.ndarray, text_to_audio: np.ndarray) -> dict[str, dict[str, float]]:
    """Both directions. ``text`` [Q, D] and ``audio`` [N, D] unit vectors; ``text_to_audio[q]`` = audio index.

    music->text: each audio item's relevant texts are all captions that point to it.
    """
    sim = text @ audio.T
    t2a = summarize_ranks(ranks_of_targets(sim, text_to_audio))
    relevant = [np.flatnonzero(text_to_audio == j) for j in range(audio.shape[0])]
    has = [j for j, r in enumerate(relevant) if len(r)]
    a2t = summarize_ranks(ranks_multi(sim.T[has], [relevant[j] for j in has]))
    return {"text_to_music": t2a, "music_to_text": a2t}


def tag_metrics(scores: np.ndarray, labels: np.ndarray, tags: list[str], min_positives: int = 5
                ) -> dict[str, object]:
    """Macro ROC-AUC and PR-AUC over tags; ``scores``/``labels`` are [N, T]."""
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
    }
