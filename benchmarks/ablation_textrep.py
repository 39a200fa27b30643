"""TTMR-style ablation: objective (align vs joint) x text representation (caption, stochastic, mixed, blend).

Trains one run per cell on a prepared corpus, evaluates each on the test split with the shared
protocol (`mtx eval`'s core), and prints one table: text->music R@1/5/10, mAP@10, MedR and tag
ROC-AUC / PR-AUC, plus the untrained and random baselines of each objective.

Prepare the demo corpus first (1000 procedural clips, MusiCNN with its real pretrained weights):

    export MTX_HOME=/tmp/ablation
    mtx download synth --n 1000 --duration 10 --seed 0 && mtx unify && mtx embed --audio-encoder musicnn
    python benchmarks/ablation_textrep.py --epochs 5 --out ablation.json

Every cell trains MiniLM with the same seed, epochs, batch size and learning rates; only the
objective and the text representation differ. ``--epochs`` is small on a CPU: say so when
quoting the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COLUMNS = [("t2m R@1", ("text_to_music", "R@1")), ("t2m R@5", ("text_to_music", "R@5")),
           ("t2m R@10", ("text_to_music", "R@10")), ("t2m mAP@10", ("text_to_music", "mAP@10")),
           ("t2m MedR", ("text_to_music", "MedR")), ("tag ROC-AUC", ("tags", "roc_auc")),
           ("tag PR-AUC", ("tags", "pr_auc"))]


def _cell(system: dict[str, Any], path: tuple[str, str]) -> float | None:
    v = system.get(path[0], {}).get(path[1])
    return None if v is None else float(v)


def _fmt(v: float | None) -> str:
    return "-" if v is None else (f"{v:.1f}" if v >= 2 else f"{v:.3f}")


def run_cell(state, args, objective: str, rep: str) -> dict[str, Any]:
    from musiccli.evaluate import EvalConfig, run_eval
    from musiccli.training import TrainConfig, run_train

    run = f"abl-{objective}-{rep}"
    cfg = TrainConfig(audio_encoder=args.encoder, manifest=args.manifest, run=run, objective=objective,
                      joint_dim=args.joint_dim if objective == "joint" else None, text_rep=rep,
                      text_backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      freeze_layers=args.freeze_layers,
                      seed=args.seed, device=args.device, precision="fp32" if args.device == "cpu" else "auto")
    t0 = time.time()
    res = run_train(state, cfg)
    train_s = time.time() - t0
    rep_obj = run_eval(state, EvalConfig(run=run, split="test", checkpoint="best", device=args.device,
                                         seed=args.seed))
    return {"run": run, "objective": objective, "text_rep": rep, "train_seconds": train_s,
            "steps": res.steps, "best_epoch": res.best_epoch, "results": rep_obj.report["results"],
            "counts": rep_obj.report.get("counts"), "protocol": rep_obj.report.get("protocol")}


def table(cells: list[dict[str, Any]]) -> str:
    head = "| system | objective | text rep | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    baselines_done = set()
    for cell in cells:
        res = cell["results"]
        lines.append(f"| model | {cell['objective']} | {cell['text_rep']} | "
                     + " | ".join(_fmt(_cell(res["model"], p)) for _, p in COLUMNS) + " |")
    for cell in cells:
        for base in ("untrained", "random"):
            key = (cell["objective"], base)
            if key in baselines_done or base not in cell["results"]:
                continue
            baselines_done.add(key)
            lines.append(f"| {base} | {cell['objective']} | - | "
                         + " | ".join(_fmt(_cell(cell["results"][base], p)) for _, p in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", type=Path, default=None, help="default: $MTX_HOME")
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--encoder", default="musicnn")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--objectives", default="align,joint")
    ap.add_argument("--text-reps", default="caption,stochastic,mixed,blend")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--freeze-layers", type=int, default=0, help="freeze the lowest N backbone layers (CPU speed)")
    ap.add_argument("--joint-dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="also write the cells as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from musiccli.state import StateDir

    state = StateDir.resolve(args.state_dir)
    cells = []
    for objective in args.objectives.split(","):
        for rep in args.text_reps.split(","):
            cell = run_cell(state, args, objective, rep)
            cells.append(cell)
            m = cell["results"]["model"]
            print(f"{cell['run']}: {cell['steps']} steps in {cell['train_seconds']:.0f} s, "
                  f"t2m R@10 {m['text_to_music']['R@10']:.3f}, tag ROC-AUC {m['tags'].get('roc_auc', float('nan')):.3f}",
                  file=sys.stderr, flush=True)
            if args.out:
                args.out.write_text(json.dumps(cells, indent=1))
    first = cells[0]
    print(f"test split: {first['counts']}; {args.epochs} epochs, batch {args.batch_size}, {args.backbone} "
          f"(lowest {args.freeze_layers} layers frozen), {args.encoder}, device {args.device}")
    print(table(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
