"""Pictures of an evaluation (matplotlib, Agg backend) and one ``report.html`` that shows them.

Written into ``<report stem>/`` next to the eval JSON (``runs/<run>/eval-<split>-<checkpoint>/``):

- ``cosine.png``: cosine of matched (track, own main caption) vs unmatched (track, other caption) pairs;
- ``map.png``: a 2-D t-SNE (UMAP when installed) of test audio and caption vectors, coloured by the
  first label field;
- ``tag_roc.png``: per-tag ROC-AUC of the model, sorted;
- ``recall_at_k.png``: R@K against K, both directions, with the chance line;
- ``confusion-<field>.png``: the zero-shot confusion matrix of each single-label field (row-normalised);
- ``report.html``: the tables of the JSON report and the pictures.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .state import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

MAX_MAP_POINTS = 1500        # tracks in the 2-D map (t-SNE is O(N^2) on a CPU)
MAX_UNMATCHED = 50_000
MAX_LEGEND = 12
RETRIEVAL_METRICS = ("R@1", "R@5", "R@10", "mAP@10", "MRR", "MedR", "MedR0")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


# --------------------------------------------------------------------------- the pictures
def cosine_pairs(audio: np.ndarray, text: np.ndarray, item_texts: list[np.ndarray],
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(matched, unmatched) cosines: each track with its own captions; with captions that are not its own."""
    sim = audio @ text.T                                       # [tracks, texts]
    own = np.zeros(sim.shape, dtype=bool)
    for j, t in enumerate(item_texts):
        own[j, t] = True
    matched, unmatched = sim[own], sim[~own]
    if unmatched.size > MAX_UNMATCHED:
        unmatched = np.random.default_rng(seed).choice(unmatched, MAX_UNMATCHED, replace=False)
    return matched, unmatched


def plot_cosines(matched: np.ndarray, unmatched: np.ndarray, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    lo = float(min(matched.min(initial=1.0), unmatched.min(initial=1.0)))
    bins = np.linspace(lo, 1.0, 50)
    ax.hist(unmatched, bins=bins, density=True, alpha=0.55, label=f"unmatched pairs (n={unmatched.size})")
    ax.hist(matched, bins=bins, density=True, alpha=0.55, label=f"matched pairs (n={matched.size})")
    ax.axvline(float(np.median(matched)), ls="--", lw=1, color="C1")
    ax.axvline(float(np.median(unmatched)), ls="--", lw=1, color="C0")
    ax.set_xlabel("cosine(text, audio)")
    ax.set_ylabel("density")
    ax.set_title("Text-audio cosine: matched vs unmatched (medians dashed)")
    ax.legend()
    return _save(fig, path)


def embed_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates by UMAP when installed, else t-SNE; returns (coords, method)."""
    try:
        import umap  # type: ignore[import-not-found]

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE

        perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"


def plot_map(audio: np.ndarray, text: np.ndarray, labels: list[str | None], field: str, path: Path,
             seed: int = 0) -> Path:
    """Audio (dots) and each track's main caption (crosses) in one 2-D map, coloured by label."""
    n = len(audio)
    keep = np.arange(n)
    if n > MAX_MAP_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(n, MAX_MAP_POINTS, replace=False))
    xy, method = embed_2d(np.concatenate([audio[keep], text[keep]]).astype(np.float64), seed)
    a, t = xy[:len(keep)], xy[len(keep):]
    lab = [labels[i] or "(none)" for i in keep]
    counts: dict[str, int] = {}
    for v in lab:
        counts[v] = counts.get(v, 0) + 1
    shown = [v for v, _ in sorted(counts.items(), key=lambda kv: -kv[1])][:MAX_LEGEND]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20" if len(shown) > 10 else "tab10")
    for ci, v in enumerate(shown + ["(other)"]):
        sel = np.array([(x == v) if v != "(other)" else (x not in shown) for x in lab])
        if not sel.any():
            continue
        color = "lightgrey" if v == "(other)" else cmap(ci % cmap.N)
        ax.scatter(a[sel, 0], a[sel, 1], s=14, color=color, marker="o", label=v)
        ax.scatter(t[sel, 0], t[sel, 1], s=18, color=color, marker="x")
    ax.set_title(f"{method} of test audio (o) and captions (x), coloured by {field}")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.2, loc="best", ncol=2)
    return _save(fig, path)


def plot_tag_roc(per_tag: dict[str, float], path: Path, max_tags: int = 60) -> Path | None:
    items = sorted(((k, v) for k, v in per_tag.items() if v == v), key=lambda kv: -kv[1])
    if not items:
        return None
    if len(items) > max_tags:   # the best and the worst halves
        items = items[:max_tags // 2] + items[-max_tags // 2:]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, max(2.5, 0.22 * len(items) + 1)))
    names, vals = [k for k, _ in items][::-1], [v for _, v in items][::-1]
    ax.barh(range(len(vals)), vals, color=["C2" if v >= 0.5 else "C3" for v in vals])
    ax.set_yticks(range(len(vals)), names, fontsize=7)
    ax.axvline(0.5, ls="--", lw=1, color="k")
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC-AUC (0.5 = chance)")
    ax.set_title("Per-tag ROC-AUC of the model, sorted")
    return _save(fig, path)


def recall_curve(ranks: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Hit rate R@K for each K (ranks are 1-based)."""
    return np.array([(ranks <= k).mean() for k in ks])


def plot_recall(curves: dict[str, tuple[np.ndarray, int]], path: Path) -> Path:
    """``curves``: label -> (1-based ranks, candidates per query, for the chance line)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, (label, (ranks, n)) in enumerate(curves.items()):
        ks = np.unique(np.clip(np.round(np.geomspace(1, max(1, n), 40)).astype(int), 1, n))
        ax.plot(ks, recall_curve(ranks, ks), marker=".", color=f"C{i}", label=label)
        ax.plot(ks, np.minimum(1.0, ks / n), ls=":", color=f"C{i}", lw=1, label=f"{label}: chance")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("K")
    ax.set_ylabel("R@K (hit rate)")
    ax.set_title("Recall at K")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(confusion: np.ndarray, classes: list[str], field: str, path: Path) -> Path:
    c = np.asarray(confusion, dtype=np.float64)
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    plt = _plt()
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    if len(classes) <= 15:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if c[i, j]:
                    ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted (zero-shot)")
    ax.set_ylabel("true")
    ax.set_title(f"Zero-shot confusion: {field}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


# --------------------------------------------------------------------------- the page
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def retrieval_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    results = report.get("results", {})
    systems = [s for s in ("model", "native", "untrained", "random") if s in results]
    rows = []
    for task in ("text_to_music", "music_to_text"):
        for m in RETRIEVAL_METRICS:
            rows.append([f"{task.replace('_', ' ')} {m}", *[results[s][task].get(m) for s in systems]])
    for m in ("roc_auc", "pr_auc"):
        rows.append([f"tags {m}", *[results[s].get("tags", {}).get(m) for s in systems]])
    return ["metric", *systems], rows


def zero_shot_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """One row per (field, metric); columns: every system that scored any field, the probe last."""
    fields = report.get("zero_shot", {}).get("fields", {})
    order = ("model", "native", "untrained", "random", "probe")
    systems = [s for s in order if any(s in f["systems"] for f in fields.values())]
    rows = []
    for name, f in fields.items():
        metrics = ("roc_auc", "pr_auc") if f["kind"] == "multi-label" else ("top1", "top3", "balanced_accuracy")
        for m in metrics:
            rows.append([f"{name} {m}", *[f["systems"].get(s, {}).get(m) for s in systems]])
    return ["field / metric", *systems], rows


def write_html(path: Path, report: dict[str, Any], pictures: list[tuple[str, Path]]) -> Path:
    c = report.get("counts", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>mtx eval: {html.escape(str(report.get('run')))}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:1em 0}"
        "</style></head><body>",
        f"<h1>Run {html.escape(str(report.get('run')))}</h1>",
        f"<p>{html.escape(str(report.get('split')))} split of {html.escape(str(report.get('manifest')))}, "
        f"{html.escape(str(report.get('checkpoint')))} checkpoint, audio encoder "
        f"{html.escape(str(report.get('audio_encoder')))}; {c.get('tracks')} tracks, "
        f"{c.get('distinct_captions')} distinct captions. Median rank is 1-based.</p>",
        "<h2>Retrieval</h2>", _table(*retrieval_rows(report)),
    ]
    zs = report.get("zero_shot")
    if zs:
        templates = ", ".join(f"&quot;{html.escape(t)}&quot;" for t in zs.get("templates", []))
        parts += ["<h2>Zero-shot classification</h2>",
                  f"<p>Prompt <b>{html.escape(str(zs.get('prompt')))}</b>: {templates}. "
                  f"{html.escape(str(zs.get('protocol', '')))}</p>", _table(*zero_shot_rows(report))]
    notes = report.get("baseline_notes") or {}
    if notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in notes.items()]
        parts.append("</ul>")
    parts.append("<h2>Pictures</h2>")
    for title, pic in pictures:
        parts.append(f"<h3>{html.escape(title)}</h3><img src='{html.escape(pic.name)}' alt='{html.escape(title)}'>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path


def write_eval_plots(out_dir: Path, report: dict[str, Any], audio: np.ndarray, text: np.ndarray, relevance,
                     main_text: np.ndarray, color: tuple[str, list[str | None]], seed: int = 0) -> Path:
    """All pictures of one evaluation of the model plus ``report.html``; returns the page's path.

    ``audio`` [tracks, D] and ``text`` [distinct captions, D] are the model's unit vectors;
    ``relevance`` is the evaluation's ``retrieval.Relevance``; ``main_text`` [tracks] the index of
    each track's main caption in ``text``.
    """
    from .retrieval import rank_queries

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pics: list[tuple[str, Path]] = []
    matched, unmatched = cosine_pairs(audio, text, relevance.item_texts, seed)
    pics.append(("Cosine distributions", plot_cosines(matched, unmatched, out_dir / "cosine.png")))
    if len(audio) >= 5:
        pics.append((f"2-D map by {color[0]}", plot_map(audio, text[main_text], color[1], color[0],
                                                         out_dir / "map.png", seed)))
    roc = plot_tag_roc(report.get("results", {}).get("model", {}).get("tags", {}).get("per_tag_roc_auc") or {},
                       out_dir / "tag_roc.png")
    if roc is not None:
        pics.append(("Per-tag ROC-AUC", roc))
    t2m = rank_queries(text[relevance.queries], audio, relevance.query_items).first
    m2t = rank_queries(audio, text, relevance.item_texts).first
    pics.append(("Recall at K", plot_recall({"text->music": (t2m, audio.shape[0]),
                                             "music->text": (m2t, text.shape[0])}, out_dir / "recall_at_k.png")))
    for name, f in (report.get("zero_shot") or {}).get("fields", {}).items():
        model = f["systems"].get("model", {})
        if f["kind"] == "single-label" and "confusion" in model:
            safe = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or "field"
            pics.append((f"Zero-shot confusion: {name}",
                         plot_confusion(np.array(model["confusion"]), f["classes"], name,
                                        out_dir / f"confusion-{safe}.png")))
    return write_html(out_dir / "report.html", report, pics)
