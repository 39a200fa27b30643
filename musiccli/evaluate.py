"""Evaluate a trained run: caption retrieval both ways, tag retrieval, and baselines.

The protocol is ``musiccli.retrieval``'s (shared with validation and the demo): relevance by exact
caption text and by recording (group), block-wise ranking, R@K as a hit rate, true AP@10, MRR,
and the median rank in both conventions (``MedR`` 1-based, ``MedR0`` 0-based). ``--query-protocol``
picks the text queries: ``main`` (each distinct main caption) or ``all`` (every distinct caption,
Song Describer's protocol). Tags are queried with their cleaned value ("genre---rock" -> "rock"),
scored (cosine) against every track, and ROC-AUC / PR-AUC are macro-averaged over tags with >= 5
positives; the report records the tag -> query text map.

Before scoring, test records that the run trained on (same id or same recording group as a record
of the run's train split) are dropped with a warning, and counted in the report; if nothing is
left the evaluation is refused. This matters when ``--manifest`` names another manifest than the
run's own.

The run's model family (``musiccli.families``) supplies the audio vectors (a store's rows through the
run's audio tower, or a student's music tower over the audio), its baselines beyond random text vectors
(seeded Gaussian, same dim) and the report keys only it has; everything else here is the same for
every family: leaks, the retrieval protocol, zero-shot tables, prompts and plots. A baseline that
cannot be computed (e.g. weights not available offline) is skipped with a note.
The report is written atomically to ``runs/<run>/eval-<split>-<checkpoint>.json``
(``runs.eval_report_path``), so each checkpoint keeps its own numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import zeroshot
from .errors import MtxError, unknown_choice
from .manifest import Record, group_of, manifest_hash, read_manifest
from .progress import NullProgress, Progress
from .retrieval import (PROTOCOLS, Relevance, caption_relevance, describe_protocol, merge_tag_labels, music_to_text,
                        tag_metrics, tag_precision_at_k, tag_queries, text_to_music)
from .families import family_for
from .runs import RunInfo, eval_key, eval_report_path, resolve_run
from .state import Resume, StateDir, atomic_write_json, begin_stage, read_json, stage_function, to_jsonable

log = logging.getLogger(__name__)

MIN_TAG_POSITIVES = 5


# --------------------------------------------------------------------------- config / result
def _text_health(encode, run: str) -> dict[str, Any]:
    """The run's text-tower health figure (musiccli.text_health), reported, and warned about when collapsed."""
    from .text_health import THRESHOLD, text_tower_health

    figure = text_tower_health(encode)
    if figure > THRESHOLD:
        log.warning("run %s: its text tower looks collapsed (mean pairwise cosine %.4f > %.2f): every query "
                    "ranks the library alike", run, figure, THRESHOLD)
    return {"mean_pairwise_cosine": round(figure, 6), "threshold": THRESHOLD, "collapsed": figure > THRESHOLD}


@dataclass
class EvalConfig:
    run: str | None = None
    split: str = "test"
    manifest: str | None = None
    checkpoint: str = "best"
    batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    baselines: bool = True
    query_protocol: str = "main"          # main | all (see musiccli.retrieval)
    seed: int = 0
    resume: Resume = Resume.FRESH
    zero_shot: tuple[str, ...] = ()    # label fields for zero-shot classification (zeroshot.label_set)
    prompt: str = "raw"                # raw | clap | ensemble (zeroshot.PROMPTS)
    plots: bool = True                 # PNGs + report.html next to the JSON (plots.py)


@dataclass
class EvalReport:
    run: str
    split: str
    checkpoint: str
    path: Path
    report: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    html: Path | None = None           # report.html, when plots were drawn
    warnings: list[str] = field(default_factory=list)  # e.g. the run never saw the evaluated sources


# --------------------------------------------------------------------------- evaluation data
@dataclass
class EvalData:
    """Everything the systems are scored on; built once per evaluation."""

    records: list[Record]
    audio_raw: np.ndarray                 # [N, D] native-space store vectors
    relevance: Relevance                  # caption <-> track relevance and the text queries
    tags: list[str]                       # query texts of the tags (cleaned, distinct)
    tag_map: dict[str, str]               # raw tag -> query text
    labels: np.ndarray                    # [N, len(tags)] 0/1

    @property
    def texts(self) -> list[str]:
        return self.relevance.texts


def build_eval_data(records: Sequence[Record], audio_raw: np.ndarray, protocol: str = "main") -> EvalData:
    raw_tags = sorted({t for r in records for t in r.tags})
    tag_pos = {t: i for i, t in enumerate(raw_tags)}
    raw_labels = np.zeros((len(records), len(raw_tags)), dtype=np.int8)
    for j, r in enumerate(records):
        for t in r.tags:
            raw_labels[j, tag_pos[t]] = 1
    texts, tag_map, columns = tag_queries(raw_tags)
    return EvalData(records=list(records), audio_raw=audio_raw, relevance=caption_relevance(records, protocol),
                    tags=texts, tag_map=tag_map, labels=merge_tag_labels(raw_labels, columns))


def tag_music_queries(tags: Sequence[str]) -> list[str]:
    """The queries people type for a tag: "<tag> music" (P@10 of these is the lift's third number)."""
    return [f"{t} music" for t in tags]


def score_system(data: EvalData, audio: np.ndarray, text: np.ndarray, tag_vecs: np.ndarray,
                 tag_music_vecs: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics for one system: ``audio`` [N, D], ``text`` [len(texts), D], ``tag_vecs`` [T, D] and
    ``tag_music_vecs`` (the "<tag> music" queries, [T, D]), unit rows."""
    rel = data.relevance
    out: dict[str, Any] = {"text_to_music": text_to_music(text[rel.queries], audio, rel),
                           "music_to_text": music_to_text(text, audio, rel)}
    if data.tags:
        out["tags"] = tag_metrics(audio @ tag_vecs.T, data.labels, data.tags, min_positives=MIN_TAG_POSITIVES)
        out["tags"].setdefault("per_tag_roc_auc", {})
        out["tags"].setdefault("per_tag_ap", {})
        if tag_music_vecs is not None:
            out["tag_music_p@10"] = tag_precision_at_k(audio @ tag_music_vecs.T, data.labels, data.tags, k=10,
                                                       min_positives=MIN_TAG_POSITIVES)
    else:
        out["tags"] = {"roc_auc": float("nan"), "pr_auc": float("nan"), "n_tags": 0, "skipped": 0}
    return out


LIFT_BASELINES = ("native", "untrained")   # zero-shot tower first; else the run's backbone with a fresh head


def lift(results: dict[str, Any]) -> dict[str, Any] | None:
    """The model against the zero-shot native tower (else the untrained baseline) on the same tracks:
    tag ROC-AUC, mean per-tag AP and P@10 of "<tag> music" queries, each model, baseline and difference;
    per tag AP; and the verdict search follows (``beats_baseline``: ROC-AUC and AP both higher)."""
    baseline = next((b for b in LIFT_BASELINES if b in results), None)
    if baseline is None or "model" not in results:
        return None
    model, base = results["model"], results[baseline]

    def entry(m: float | None, b: float | None) -> dict[str, float | None]:
        ok = m is not None and b is not None and not (np.isnan(m) or np.isnan(b))
        return {"model": m, "baseline": b, "lift": float(m - b) if ok else None}

    metrics = {"tag_roc_auc": entry(model["tags"].get("roc_auc"), base["tags"].get("roc_auc")),
               "tag_ap": entry(model["tags"].get("pr_auc"), base["tags"].get("pr_auc")),
               "tag_music_p@10": entry((model.get("tag_music_p@10") or {}).get("mean"),
                                       (base.get("tag_music_p@10") or {}).get("mean"))}
    m_ap, b_ap = model["tags"].get("per_tag_ap", {}), base["tags"].get("per_tag_ap", {})
    per_tag = {t: entry(m_ap[t], b_ap.get(t)) for t in sorted(m_ap)}
    lifts = [metrics[k]["lift"] for k in ("tag_roc_auc", "tag_ap")]
    return {"baseline": baseline, "metrics": metrics, "per_tag_ap": per_tag,
            "beats_baseline": all(x is not None and x > 0 for x in lifts),
            "rule": "beats the baseline when tag ROC-AUC and mean per-tag AP are both higher on the held-out "
                    "tracks; `mtx search` keeps the native tower for a run that does not"}


# --------------------------------------------------------------------------- train/test leaks
@dataclass
class LeakCheck:
    kept: list[Record]
    dropped: int = 0
    examples: list[str] = field(default_factory=list)
    note: str = ""


def drop_training_records(records: Sequence[Record], train_records: Sequence[Record] | None) -> LeakCheck:
    """Leave out records that the run trained on: the same id, or the same recording (group)."""
    if train_records is None:
        return LeakCheck(kept=list(records), note="not checked: the run's training manifest is unavailable")
    ids = {r.id for r in train_records}
    groups = {group_of(r) for r in train_records}
    out = LeakCheck(kept=[])
    for r in records:
        if r.id in ids or group_of(r) in groups:
            out.dropped += 1
            if len(out.examples) < 5:
                out.examples.append(r.id)
        else:
            out.kept.append(r)
    out.note = f"{out.dropped} record(s) that the run trained on were left out" if out.dropped else "no overlap"
    return out


def _run_train_records(info: RunInfo, mpath: Path, records_all: list[Record]) -> list[Record] | None:
    """The records of the run's train split: from the manifest it was trained on, as recorded in run.json."""
    train_path = Path(info.meta.manifest_path or "")
    if train_path.is_file() and train_path.resolve() == Path(mpath).resolve():
        return [r for r in records_all if r.split == "train"]
    if not train_path.is_file():
        log.warning("run %s: its training manifest %s is gone; cannot check the split for training records",
                    info.name, train_path or "(not recorded)")
        return None
    if info.meta.manifest_hash and manifest_hash(train_path) != info.meta.manifest_hash:
        log.warning("run %s: its training manifest %s changed since training; checking against its current "
                    "train split", info.name, train_path)
    return [r for r in read_manifest(train_path) if r.split == "train"]


def held_out(info: RunInfo, mpath: Path, mname: str, records_all: list[Record], split: str) -> LeakCheck:
    """The ``split`` records of the manifest minus those the run trained on (logged); refused when none is left."""
    in_split = [r for r in records_all if r.split == split]
    if split == "train":
        return LeakCheck(kept=in_split, note="not checked: evaluating the train split")
    leaks = drop_training_records(in_split, _run_train_records(info, mpath, records_all))
    if leaks.dropped:
        log.warning("%d %s record(s) of %s were training records of run %s (same id or recording) and are "
                    "left out, e.g. %s", leaks.dropped, split, mname, info.name, ", ".join(leaks.examples))
    if in_split and not leaks.kept:
        raise MtxError(f"every {split} record of {mname} was a training record of run {info.name}",
                       hint="evaluate on a manifest whose test split the run did not train on")
    return leaks


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _encode(model, texts: list[str], runtime, batch_size: int) -> np.ndarray:
    import torch

    if not texts:
        dim = model.dim if hasattr(model, "dim") else model.config.out_dim   # a bare TextEmbedder has no .dim
        return np.zeros((0, int(dim)), dtype=np.float32)
    with torch.inference_mode(), runtime.autocast():
        return _unit(model.encode(texts, batch_size=batch_size))


def _zero_shot_sets(records: list[Record], fields: Sequence[str], notes: dict[str, str]) -> dict[str, Any]:
    """The label set of each requested field over the evaluated split (fields with < 2 classes noted)."""
    out = {}
    for f in dict.fromkeys(fields):
        ls = zeroshot.label_set(records, f)
        if len(ls.classes) < zeroshot.MIN_CLASSES:
            notes[f"zero-shot {f}"] = f"skipped: one class only ({ls.classes[0]})"
            continue
        out[f] = ls
    return out


def _probe(zs: dict[str, Any], test_raw: np.ndarray, train_records: list[Record], train_raw: np.ndarray,
           seed: int, notes: dict[str, str]) -> dict[str, Any]:
    out = {}
    for f, test in zs.items():
        try:
            train = zeroshot.restrict(zeroshot.label_set(train_records, f), test.classes)
            if not len(train.rows):
                raise MtxError(f"no train-split track has a {f!r} label of the test classes")
            out[f] = zeroshot.linear_probe(train_raw, train, test_raw, test, seed=seed)
            out[f]["n_train"] = int(len(train.rows))
        except MtxError as e:
            notes[f"probe {f}"] = f"skipped: {e.message}"
    return out


def _zero_shot_report(zs: dict[str, Any], results: dict[str, Any], cfg: EvalConfig,
                      probe: dict[str, Any]) -> dict[str, Any]:
    fields = {}
    for f, ls in zs.items():
        systems = {s: r["zero_shot"][f] for s, r in results.items() if f in r.get("zero_shot", {})}
        if f in probe:
            systems["probe"] = probe[f]
        fields[f] = {"kind": "multi-label" if ls.multi else "single-label", "classes": ls.classes,
                     "n_test": int(len(ls.rows)), "systems": systems}
    return {"prompt": cfg.prompt, "templates": list(zeroshot.prompt_templates(cfg.prompt)), "fields": fields,
            "protocol": "class names through the prompt, embedded by each system's text tower, cosine against "
                        "each test track; probe = logistic regression on standardised frozen audio vectors "
                        "of the train split (an upper reference: it sees labels)"}


def _draw(out_path: Path, report: dict[str, Any], data: EvalData, model, audio: np.ndarray, runtime,
          cfg: EvalConfig, zs: dict[str, Any]) -> Path | None:
    """PNGs and report.html next to the JSON; a plotting failure is logged, never fatal."""
    from . import plots

    try:
        text_vecs = _encode(model, data.texts, runtime, cfg.batch_size)
        color = _first_labels(data, zs)
        rel = data.relevance
        pos = {t: i for i, t in enumerate(rel.texts)}
        main_text = np.array([pos.get(r.caption, int(rel.item_texts[j][0])) for j, r in enumerate(data.records)])
        return plots.write_eval_plots(out_path.with_suffix(""), report, audio, text_vecs, rel, main_text, color,
                                      seed=cfg.seed)
    except ImportError as e:
        log.warning("plots skipped: %s", e)
        return None


def _first_labels(data: EvalData, zs: dict[str, Any]) -> tuple[str, list[str | None]]:
    """(field, label per test track) to colour the 2-D map: the first zero-shot field, else the first tag."""
    if zs:
        f, ls = next(iter(zs.items()))
        labels: list[str | None] = [None] * len(data.records)
        for k, row in enumerate(ls.rows.tolist()):
            labels[row] = ls.classes[int(ls.targets[k].argmax())]
        return f, labels
    return "first tag", [r.tags[0] if r.tags else None for r in data.records]


@stage_function
def run_eval(state: StateDir, cfg: EvalConfig, progress: Progress | None = None) -> EvalReport:
    """Evaluate one checkpoint of any family's run (the family supplies the vectors and its own baselines)."""
    from .runtime import select_runtime

    progress = progress or NullProgress()
    if cfg.split not in ("train", "val", "test"):
        raise unknown_choice("split", cfg.split, ("train", "val", "test"))
    if cfg.query_protocol not in PROTOCOLS:
        raise unknown_choice("query protocol", cfg.query_protocol, PROTOCOLS)
    if cfg.zero_shot or cfg.prompt != "raw":
        zeroshot.prompt_templates(cfg.prompt)   # an unknown --prompt fails before any work
    info = resolve_run(state, cfg.run)
    family = family_for(info)
    ckpt = info.checkpoint_dir(cfg.checkpoint)
    plan = family.eval_plan(state, info, ckpt, cfg.manifest, cfg.baselines)
    mname, mpath = plan.manifest, plan.manifest_path
    records_all = read_manifest(mpath)
    warnings = _provenance_warnings(info, [r for r in records_all if r.split == cfg.split])
    out_path = eval_report_path(state, info.name, cfg.split, cfg.checkpoint)
    systems = plan.systems
    stage_config = {**plan.stage_config, "seed": cfg.seed, "query_protocol": cfg.query_protocol}
    if cfg.zero_shot:
        stage_config.update(zero_shot=list(dict.fromkeys(cfg.zero_shot)), prompt=cfg.prompt)
    if not cfg.plots:
        stage_config["plots"] = False   # recorded only when off, so a later run with plots draws them
    # New weights (more training) or new data make the old report stale: evaluating again is
    # the expected behaviour, not a conflict the user must resolve with --force.
    stage = begin_stage(state, "eval", eval_key(info.name, cfg.split, cfg.checkpoint), config=stage_config,
                        mode=cfg.resume, discard=lambda: out_path.unlink(missing_ok=True), redo_changed=True,
                        outputs={"report": out_path})
    if stage.already_complete and out_path.exists():
        html = out_path.with_suffix("") / "report.html"
        return EvalReport(info.name, cfg.split, cfg.checkpoint, out_path, read_json(out_path), skipped=True,
                          html=html if html.exists() else None, warnings=warnings)

    runtime = select_runtime(cfg.device, cfg.precision)
    log.info("evaluating run %s (%s checkpoint) on the %s split of %s; %s",
             info.name, cfg.checkpoint, cfg.split, mname, runtime.describe())
    model = family.load(ckpt, "torch", runtime.device)
    leaks = held_out(info, mpath, mname, records_all, cfg.split)
    vecs = family.eval_vectors(plan, model, leaks.kept, records_all, with_train=bool(cfg.zero_shot))
    records = vecs.records
    if not records:
        from .manifest import split_counts

        raise MtxError(f"no {cfg.split} records of {mname} have audio vectors for this run "
                       f"(split sizes: {split_counts(records_all)})",
                       hint="pick another --split, or run `mtx unify`/`mtx embed` so the split is populated")
    data = build_eval_data(records, vecs.raw, cfg.query_protocol)
    audio = _unit(vecs.audio)

    def encoder(m) -> Any:
        return lambda texts: _encode(m, list(texts), runtime, cfg.batch_size)

    results: dict[str, Any] = dict(stage.record.counters.get("results", {})) if stage.resumed else {}
    notes: dict[str, str] = dict(stage.record.counters.get("notes", {})) if stage.resumed else {}
    notes.update(plan.notes)
    zs = _zero_shot_sets(records, cfg.zero_shot, notes)
    with progress.task("Evaluating", total=len(systems), unit="systems", completed=len(results)) as task:
        for name in systems:
            progress.check_interrupt()
            if name in results or name in notes:
                continue
            try:
                if name == "model":
                    audio_sys, encode = audio, encoder(model)
                elif name == "random":
                    audio_sys, encode = audio, _random_encoder(int(model.dim), cfg.seed)
                else:
                    audio_sys, encode = family.eval_system(name, model, vecs, info, runtime, encoder, cfg.seed)
            except MtxError as e:
                log.warning("%s baseline skipped: %s", name, e.message)
                notes[name] = f"skipped: {e.message}"
            else:
                results[name] = score_system(data, audio_sys, encode(data.texts), encode(data.tags),
                                             encode(tag_music_queries(data.tags)) if data.tags else None)
                if zs:
                    results[name]["zero_shot"] = {
                        f: zeroshot.zero_shot(audio_sys, zeroshot.class_vectors(encode, ls.classes, cfg.prompt), ls)
                        for f, ls in zs.items()}
                del encode
            stage.update(results=to_jsonable(results), notes=notes)   # one committed unit per system
            task.advance()

    report = _make_report(info, cfg, mname, plan.store_path, data, results, notes, stage_config)
    report["leak_check"] = {"dropped_training_records": leaks.dropped, "examples": leaks.examples,
                            "note": leaks.note}
    report.update(family.eval_extras(state, plan, info, model, vecs, data.texts, cfg.split))
    report["text_health"] = _text_health(encoder(model), info.name)
    report["baseline_notes"] = notes
    report["lift"] = lift(results)
    if zs:
        train_raw = vecs.train_raw if vecs.train_raw is not None else np.zeros((0, vecs.raw.shape[1]))
        report["zero_shot"] = _zero_shot_report(zs, results, cfg, _probe(zs, vecs.raw, vecs.train_records,
                                                                         train_raw, cfg.seed, notes))
    report = to_jsonable(report)
    atomic_write_json(out_path, report)
    html = None
    if cfg.plots:
        html = _draw(out_path, report, data, model, audio, runtime, cfg, zs)
    stage.complete(result={"path": str(out_path), "html": str(html) if html else None})
    return EvalReport(info.name, cfg.split, cfg.checkpoint, out_path, report, html=html, warnings=warnings)


def _random_encoder(dim: int, seed: int):
    """The random baseline: seeded Gaussian text vectors of the run's width (one stream per evaluation)."""
    rng = np.random.default_rng(seed)
    return lambda texts: _unit(rng.standard_normal((len(texts), dim)))


def _provenance_warnings(info: RunInfo, records: Sequence[Record]) -> list[str]:
    """The run-met-other-music line for the tracks being evaluated (returned for the CLI, not logged)."""
    from .provenance import run_training_data, source_counts, unseen_sources_warning

    line = unseen_sources_warning(info.name, run_training_data(info.meta.to_dict()), source_counts(records))
    return [line] if line else []


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def _make_report(info: RunInfo, cfg: EvalConfig, mname: str, emb_path: Path | None, data: EvalData,
                 results: dict[str, Any], notes: dict[str, str], stage_config: dict[str, Any]) -> dict[str, Any]:
    model_tags = results["model"]["tags"]
    ratio = {}
    if "random" in results and "model" in results:
        for d in ("text_to_music", "music_to_text"):
            ratio[d] = _ratio(results["model"][d]["R@10"], results["random"][d]["R@10"])
    return {
        "run": info.name,
        "checkpoint": cfg.checkpoint,
        "split": cfg.split,
        "manifest": mname,
        "embeddings": str(emb_path) if emb_path is not None else None,
        "objective": info.objective,
        "audio_encoder": info.audio_encoder,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "protocol": {
            "query_protocol": cfg.query_protocol,
            "text_to_music": describe_protocol(cfg.query_protocol),
            "music_to_text": "each track ranks all distinct captions (main + alternative) of the split; "
                             "relevant = its own captions and those of tracks of the same recording",
            "median_rank": "MedR is 1-based: floor(median of 0-based ranks) + 1 (LAION-CLAP, open_clip); "
                           "MedR0 is 0-based: median of 0-based ranks (TTMR convention, plain median)",
            "metrics": "R@K = hit rate (a relevant item in the top K); mAP@10 = true AP@10 over all relevant "
                       "items, (1/min(R,10)) * sum of P@k at relevant ranks k <= 10; MRR = mean 1/rank of the "
                       "first relevant item; ties count against the target",
            "tags": f"each tag's cleaned value (e.g. genre---rock -> rock, see tag_queries) embedded as a query, "
                    f"cosine against every track; macro ROC-AUC / PR-AUC over tags with >= {MIN_TAG_POSITIVES} "
                    f"positives; per-tag AP likewise; tag_music_p@10 = P@10 of each \"<tag> music\" query, "
                    f"macro-averaged",
            "lift": "the model minus the native tower (else the untrained baseline) on the same held-out "
                    "tracks: tag ROC-AUC, mean per-tag AP, \"<tag> music\" P@10",
            "baselines": f"random = seeded Gaussian text vectors (seed {cfg.seed}); untrained = the run's "
                         f"backbone with a freshly initialised head (torch seed {cfg.seed}; joint runs also a fresh "
                         f"audio head), same audio stats; "
                         f"native (clap, muq) = the audio encoder's own zero-shot text tower against the mean "
                         f"part of the stored vectors",
        },
        "tag_queries": data.tag_map,
        "counts": {
            "tracks": len(data.records),
            "text_queries": len(data.relevance.queries),
            "captions": data.relevance.n_captions,
            "distinct_captions": len(data.texts),
            "tags_total": len(data.tags),
            "tags_used": int(model_tags.get("n_tags", 0)),
            "tags_skipped": int(model_tags.get("skipped", 0)),
        },
        "results": results,
        "baseline_notes": notes,
        "ratio_r10_model_vs_random": ratio,
        "inputs": stage_config,
    }
