"""Wall time of `mtx demo`, per stage, against its 10-minute budget on 2 CPU cores.

    python benchmarks/demo_walltime.py                 # the real default demo (1000 clips x 10 s)
    python benchmarks/demo_walltime.py --n 200 --epochs 2

Runs the demo's core function into a temporary state directory (or --state-dir) and
prints a table of stage times, the share of each stage, the quality checks, and the
ratio of the total to the budget (< 1.0 means within budget).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 600.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo's default")
    ap.add_argument("--encoder", default=None, help="default: the demo's (musicnn if installed, else dsp)")
    ap.add_argument("--state-dir", type=Path, default=None)
    args = ap.parse_args(argv)

    from musiccli.demo import DemoConfig, run_demo
    from musiccli.state import StateDir

    logging.basicConfig(level=logging.WARNING)
    cfg = DemoConfig(n=args.n, duration=args.duration, audio_encoder=args.encoder)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    with tempfile.TemporaryDirectory(prefix="mtx-demo-bench-") as tmp:
        state = StateDir.resolve(args.state_dir or tmp)
        t0 = time.perf_counter()
        result = run_demo(state, cfg)
        total = time.perf_counter() - t0
    print(f"mtx demo: {cfg.n} clips x {cfg.duration:g} s, encoder {result.audio_encoder}, {cfg.epochs} epochs")
    print(f"{'stage':<10}{'seconds':>10}{'share':>8}  summary")
    for s in result.stages:
        print(f"{s.stage:<10}{s.seconds:>10.1f}{s.seconds / total:>8.0%}  {s.summary}")
    print(f"{'total':<10}{total:>10.1f}")
    for c in result.checks:
        print(f"check: {c.name}: {c.value:.3f} (target {c.target}) {'ok' if c.passed else 'FAILED'}")
    print(f"ratio total / budget ({BUDGET_S:.0f} s): {total / BUDGET_S:.2f}")
    return 0 if result.passed and total <= BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
