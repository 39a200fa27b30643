"""`mtx demo`: the whole pipeline, offline, on the procedural `synth` dataset.

download synth -> verify -> unify -> embed -> train -> eval -> export -> search.
Every step is the real stage function with its own resume contract, so an
interrupted demo resumes with ``--continue`` and a finished one reruns as no-ops.
The result carries per-stage wall times and the quality checks the demo promises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .progress import NullProgress, Progress
from .state import Resume, StateDir

log = logging.getLogger(__name__)

DEFAULT_QUERIES = ("dark metal", "calm piano", "upbeat dance music", "relaxing ambient pads",
                   "jazz with walking bass")
NAME = "demo"


@dataclass
class DemoConfig:
    n: int = 1000
    duration: float = 10.0
    sample_rate: int = 24000
    seed: int = 0
    audio_encoder: str | None = None      # None: musicnn if its weights are installed, else dsp
    text_backbone: str = "minilm"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-4
    workers: int = 2
    queries: tuple[str, ...] = DEFAULT_QUERIES
    k: int = 5
    device: str = "auto"
    precision: str = "auto"
    resume: Resume = Resume.FRESH


@dataclass
class StageTime:
    stage: str
    seconds: float
    summary: str
    skipped: bool = False


@dataclass
class Check:
    name: str
    value: float
    target: str
    passed: bool


@dataclass
class DemoResult:
    state_dir: str
    audio_encoder: str = ""
    stages: list[StageTime] = field(default_factory=list)
    eval_report: dict[str, Any] = field(default_factory=dict)
    searches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    export_dir: str = ""
    seconds: float = 0.0
    trained_on: str = ""   # e.g. "synth (1000 synthetic clips)", from the run's recorded training data

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def _timed(result: DemoResult, stage: str, fn: Callable[[], Any], summarize: Callable[[Any], str]) -> Any:
    log.info("[demo] %s", stage)
    t0 = time.perf_counter()
    out = fn()
    result.stages.append(StageTime(stage, time.perf_counter() - t0, summarize(out), bool(getattr(out, "skipped", False))))
    return out


def default_encoder() -> str:
    """MusiCNN, a real pretrained music model, when the wheel with its weights is installed.

    Measured on 2 CPU cores: the 1000-clip demo takes about 7 minutes with musicnn and 4 with
    dsp, both inside the 10-minute budget and both passing the quality checks.
    """
    from .encoders.musicnn_torch import musicnn_checkpoint_prefix
    from .errors import MtxError

    try:
        musicnn_checkpoint_prefix("MSD_musicnn")
    except MtxError:
        log.warning("the musicnn wheel is not installed, so the demo uses the dsp encoder "
                    "(pip install --no-deps musicnn for MusiCNN)")
        return "dsp"
    return "musicnn"


def quality_checks(report: dict[str, Any], dark_metal_hits: list[dict[str, Any]]) -> list[Check]:
    """The demo's promises: tag ROC-AUC >= 0.85, R@10 >= 3x random, most of the top 5 for "dark metal" are metal."""
    res = report.get("results", {})
    model, rnd = res.get("model", {}), res.get("random", {})
    auc = float(model.get("tags", {}).get("roc_auc", float("nan")))
    r10 = float(model.get("text_to_music", {}).get("R@10", 0.0))
    r10_random = float(rnd.get("text_to_music", {}).get("R@10", 0.0))
    ratio = r10 / r10_random if r10_random > 0 else float("inf") if r10 > 0 else 0.0
    top = dark_metal_hits[:5]
    metal = sum(1 for h in top if "metal" in [t.lower() for t in h.get("tags") or []])
    return [
        Check("tag ROC-AUC (test)", auc, ">= 0.85", auc >= 0.85),
        Check("text->music R@10 / random", ratio, ">= 3", ratio >= 3.0),
        Check('metal clips in top 5 for "dark metal"', float(metal), ">= 3 of 5", metal >= 3),
    ]


def _trained_on(state: StateDir) -> str:
    from .provenance import describe, run_training_data
    from .runs import RunMeta

    meta = RunMeta.read(state.run_dir(NAME))
    trained = (run_training_data(meta.to_dict()) if meta is not None else None) or {}
    return describe(trained.get("sources") or {}, trained.get("synthetic") or ())


def run_demo(state: StateDir, cfg: DemoConfig, progress: Progress | None = None) -> DemoResult:
    from .download import DownloadRequest, run_download
    from .embed import EmbedConfig, run_embed
    from .evaluate import EvalConfig, run_eval
    from .export import ExportConfig, run_export
    from .search import SearchConfig, search
    from .sources.base import DownloadConfig
    from .training.loop import TrainConfig, run_train
    from .unify import UnifyConfig, run_unify
    from .verify import VerifyConfig, run_verify

    progress = progress or NullProgress()
    encoder = cfg.audio_encoder or default_encoder()
    log.info("demo audio encoder: %s", encoder)
    result = DemoResult(state_dir=str(state.root), audio_encoder=encoder)
    t0 = time.perf_counter()
    mode = cfg.resume
    log.info("demo state directory: %s", state.root)

    dl = _timed(result, "download", lambda: run_download(state, DownloadRequest(
        DownloadConfig(source="synth", n=cfg.n, duration=cfg.duration, sample_rate=cfg.sample_rate, seed=cfg.seed,
                       workers=cfg.workers), resume=mode), progress),
        lambda r: f"{r.ok} clips generated, {r.failed} failed")
    if dl.failed:
        from .errors import MtxError

        raise MtxError(f"synth generation failed for {dl.failed} clips", hint="rerun with --continue")
    _timed(result, "verify", lambda: run_verify(state, VerifyConfig(source="synth", workers=cfg.workers,
                                                                    resume=mode), progress),
           lambda r: f"{r.ok}/{r.total} ok ({r.success_rate:.0%})")
    _timed(result, "unify", lambda: run_unify(state, UnifyConfig(datasets=["synth"], name=NAME, seed=cfg.seed,
                                                                  resume=mode), progress),
           lambda r: f"{r.records} records: " + ", ".join(f"{c.dataset} {c.train}/{c.val}/{c.test}"
                                                           for c in r.composition))
    _timed(result, "embed", lambda: run_embed(state, EmbedConfig(audio_encoder=encoder, manifest=NAME,
                                                                  num_workers=cfg.workers, device=cfg.device,
                                                                  precision=cfg.precision, resume=mode), progress),
           lambda r: f"{r.n_ok} clips -> {r.dim}-d {r.encoder} vectors")
    _timed(result, "train", lambda: run_train(state, TrainConfig(
        audio_encoder=encoder, manifest=NAME, run=NAME, text_backbone=cfg.text_backbone, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=cfg.device, precision=cfg.precision,
        # TTMR's stochastic tag text: the demo's tag queries score it best (benchmarks/ablation_textrep.py)
        text_rep="stochastic", export=False, resume=mode), progress),   # the export stage writes onnx/ + hf/
        lambda r: f"{r.epochs_done} epochs, best val R@10 {r.best_val_r10:.3f} (epoch {r.best_epoch})")
    ev = _timed(result, "eval", lambda: run_eval(state, EvalConfig(run=NAME, device=cfg.device,
                                                                    precision=cfg.precision, seed=cfg.seed,
                                                                    resume=mode), progress),
                lambda r: "test R@10 {:.3f}, tag ROC-AUC {:.3f}".format(
                    r.report["results"]["model"]["text_to_music"]["R@10"],
                    r.report["results"]["model"]["tags"]["roc_auc"]))
    result.eval_report = ev.report
    from .export import onnx_available

    formats = ("hf", "onnx") if onnx_available() else ("hf",)
    if "onnx" not in formats:
        log.warning("onnx/onnxruntime not installed: exporting hf/ only (pip install 'musiccli[onnx]')")
    ex = _timed(result, "export", lambda: run_export(state, ExportConfig(run=NAME, formats=formats, resume=mode),
                                                     progress),
                lambda r: " + ".join(r.paths) + (f" (ONNX max abs diff {r.onnx_max_abs_diff:.1e})"
                                                 if r.onnx_max_abs_diff is not None else ""))
    result.export_dir = str(ex.out)
    result.trained_on = _trained_on(state)

    def _searches() -> dict[str, list[dict[str, Any]]]:
        return {q: search(state, SearchConfig(query=q, run=NAME, k=cfg.k, device=cfg.device), progress).hits
                for q in cfg.queries}

    result.searches = _timed(result, "search", _searches, lambda s: f"{len(s)} queries")
    result.checks = quality_checks(result.eval_report, result.searches.get("dark metal", []))
    result.seconds = time.perf_counter() - t0
    return result
