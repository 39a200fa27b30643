"""Zero-shot classification through a text tower, and the linear probe that bounds it.

Labels (:func:`label_set`) come from one of:

- a record field (synth ``style`` / ``mood`` / ``instruments``, FMA ``genre_top``): a string is one
  label, a list several;
- a tag family, named by its prefix ending in ``---`` (MTG-Jamendo ``genre---``,
  ``mood/theme---``, ``instrument---``): the tags with that prefix, the prefix removed;
- ``folder``: the name of the directory holding the audio file (GTZAN's ``label/*.wav`` layout).

A field where some track has several labels is multi-label (macro ROC-AUC / PR-AUC over classes
with positives and negatives); otherwise single-label (top-1, top-3 and balanced accuracy, and a
confusion matrix). Class names become text through a prompt (:data:`PROMPTS`): ``raw`` embeds the
name itself (TTMR), ``clap`` uses "This audio is a {} song." (LAION-CLAP's music zero-shot
prompt), ``ensemble`` averages the unit embeddings of a few templates (open_clip style) and
re-normalises. A track is scored against each class by cosine.

The probe (TTMR's probing) is a logistic regression on the frozen, standardised audio vectors of
the train split: what a linear read-out of the audio space reaches, an upper reference for
zero-shot through the text tower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MtxError, unknown_choice

PROMPTS: dict[str, tuple[str, ...]] = {
    "raw": ("{}",),
    "clap": ("This audio is a {} song.",),
    "ensemble": ("{}", "This audio is a {} song.", "a {} track.", "a piece of {} music.", "music that sounds {}.",
                 "a recording of {} music."),
}
FOLDER = "folder"
MIN_CLASSES = 2


@dataclass
class LabelSet:
    field: str
    classes: list[str]          # class names as shown (tag prefix removed)
    rows: np.ndarray            # [M] positions (into the given records) of the tracks with a label
    targets: np.ndarray         # [M, C] 0/1
    multi: bool

    @property
    def single(self) -> np.ndarray:
        """[M] class index of each track (single-label fields)."""
        return self.targets.argmax(1)


def _values(record, field: str) -> list[str]:
    if field == FOLDER:
        parent = Path(record.audio_path).parent.name
        return [parent] if parent else []
    if field.endswith("---"):
        return [t[len(field):] for t in record.tags if t.startswith(field) and len(t) > len(field)]
    value = record.extra.get(field, getattr(record, field, None) if field in ("dataset", "artist") else None)
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)]


def label_set(records: Sequence, field: str) -> LabelSet:
    """The labels of ``field`` over ``records`` (tracks without one are left out)."""
    per_track = [sorted(set(_values(r, field))) for r in records]
    rows = [i for i, v in enumerate(per_track) if v]
    if not rows:
        raise MtxError(f"no record has a {field!r} label",
                       hint="use a record field (style, mood, instruments, genre_top), a tag family "
                            "(genre---, mood/theme---, instrument---) or `folder`")
    classes = sorted({c for i in rows for c in per_track[i]})
    pos = {c: j for j, c in enumerate(classes)}
    targets = np.zeros((len(rows), len(classes)), dtype=np.int8)
    for k, i in enumerate(rows):
        for c in per_track[i]:
            targets[k, pos[c]] = 1
    return LabelSet(field, classes, np.array(rows, dtype=np.int64), targets, bool((targets.sum(1) > 1).any()))


def restrict(labels: LabelSet, classes: list[str]) -> LabelSet:
    """The same field over another split, in the class order of ``classes`` (unknown classes dropped)."""
    pos = {c: j for j, c in enumerate(labels.classes)}
    cols = [pos.get(c) for c in classes]
    targets = np.stack([labels.targets[:, j] if j is not None else np.zeros(len(labels.rows), np.int8)
                        for j in cols], axis=1)
    keep = targets.sum(1) > 0
    return LabelSet(labels.field, list(classes), labels.rows[keep], targets[keep], labels.multi)


def class_name(label: str) -> str:
    """How a class is written in a prompt: ``hip_hop`` -> "hip hop"."""
    return " ".join(label.replace("_", " ").split())


def prompt_templates(prompt: str) -> tuple[str, ...]:
    if prompt not in PROMPTS:
        raise unknown_choice("prompt", prompt, tuple(PROMPTS))
    return PROMPTS[prompt]


def class_vectors(encode: Callable[[list[str]], np.ndarray], classes: list[str], prompt: str) -> np.ndarray:
    """[C, D] unit class vectors: the mean of each class's unit template embeddings, re-normalised."""
    templates = prompt_templates(prompt)
    texts = [t.format(class_name(c)) for c in classes for t in templates]
    v = _unit(encode(texts)).reshape(len(classes), len(templates), -1).mean(1)
    return _unit(v)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- metrics
def single_label_metrics(scores: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Top-1 / top-3 accuracy, balanced accuracy (mean per-class recall over present classes), confusion."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")
    pred = order[:, 0]
    top3 = (order[:, :3] == y[:, None]).any(1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    support = confusion.sum(1)
    present = support > 0
    recall = np.diag(confusion)[present] / support[present]
    return {"top1": float((pred == y).mean()), "top3": float(top3.mean()),
            "balanced_accuracy": float(recall.mean()), "n": int(len(y)), "confusion": confusion.tolist()}


def multi_label_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Macro ROC-AUC and PR-AUC (average precision) over classes with both positives and negatives."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    roc, pr, per = [], [], {}
    for j in range(targets.shape[1]):
        t = targets[:, j]
        if 0 < t.sum() < len(t):
            roc.append(roc_auc_score(t, scores[:, j]))
            pr.append(average_precision_score(t, scores[:, j]))
            per[j] = float(roc[-1])
    return {"roc_auc": float(np.mean(roc)) if roc else float("nan"),
            "pr_auc": float(np.mean(pr)) if pr else float("nan"),
            "n_classes_scored": len(roc), "n": int(len(targets)), "per_class_roc_auc": per}


def metrics(scores: np.ndarray, labels: LabelSet) -> dict[str, Any]:
    if labels.multi:
        return multi_label_metrics(scores, labels.targets)
    return single_label_metrics(scores, labels.single, len(labels.classes))


def zero_shot(audio: np.ndarray, class_vecs: np.ndarray, labels: LabelSet) -> dict[str, Any]:
    """Metrics of cosine scores between unit ``audio`` rows (all tracks) and unit class vectors."""
    return metrics(_unit(audio[labels.rows]) @ class_vecs.T, labels)


def linear_probe(train_x: np.ndarray, train: LabelSet, test_x: np.ndarray, test: LabelSet,
                 seed: int = 0) -> dict[str, Any]:
    """Logistic regression on standardised frozen audio vectors (train split), scored on the test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, xte = np.asarray(train_x[train.rows], np.float64), np.asarray(test_x[test.rows], np.float64)
    if test.multi:   # the test split decides how the field is scored; the probe follows it
        cols = [j for j in range(train.targets.shape[1]) if 0 < train.targets[:, j].sum() < len(train.rows)]
        scores = np.zeros((len(test.rows), len(train.classes)))
        if cols:
            clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=2000)))
            clf.fit(xtr, train.targets[:, cols])
            scores[:, cols] = clf.predict_proba(xte)
        return metrics(scores, test)
    y = train.single
    present = np.unique(y)
    if len(present) < MIN_CLASSES:
        raise MtxError(f"the train split has a single {train.field!r} class", hint="the probe needs two or more")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(xtr, y)
    scores = np.full((len(test.rows), len(train.classes)), -np.inf)
    scores[:, present] = clf.predict_log_proba(xte)
    return metrics(scores, test)
