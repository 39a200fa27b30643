"""Cold `mtx search` on a 10k-track library: the ONNX path against the PyTorch path, in one run.

Builds a throw-away state dir: a 10k-record manifest, a 10k x DIM store, a run made from the
bundled MiniLM backbone with a fresh head (weights do not matter for timing), its ONNX export and
the index. Then it starts fresh processes of ``python -m musiccli search "dark metal"`` under
``/usr/bin/time -v`` (wall clock and max RSS), interleaved, ``--reps`` times each:

- ``onnx``: this checkout, the default path (ONNX text tower, no torch import, memory-mapped index);
- ``torch``: this checkout with ``--query-runtime torch`` (the fallback when no export exists);
- ``before``: with ``--before PATH`` (a checkout of main before this work), that code's search on the
  same state (it loads torch + transformers and copies the fp32 index into RAM).

Targets on 2 cores: ONNX path <= 1.5 s wall and <= 400 MB RSS.

    python benchmarks/search_cold.py [--tracks 10000] [--dim 200] [--reps 3] [--before /work/main]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_state(root: Path, n: int, dim: int) -> None:
    import torch

    from musiccli import store as store_mod
    from musiccli.encoders.text import TextEmbedder
    from musiccli.runs import export_dir, weights_identity
    from musiccli.manifest import Record, write_manifest
    from musiccli.onnx_text import export_text_onnx
    from musiccli.search import SearchConfig, search
    from musiccli.state import StateDir

    state = StateDir.resolve(root)
    rng = np.random.default_rng(0)
    records = [Record(id=f"t{i:05d}", audio_path=f"/music/t{i:05d}.mp3", caption=f"track {i}", duration=200.0,
                      dataset="bench", artist=f"artist {i % 997}", title=f"title {i}", tags=["rock", "dark"],
                      split="test") for i in range(n)]
    write_manifest(state.manifest_path("lib"), records)
    spath = state.embeddings_path("bench", "lib")
    store_mod.write_part(spath, 0, [r.id for r in records], rng.standard_normal((n, dim)).astype(np.float32))
    store_mod.assemble(spath, dim, "float32", {"encoder": "bench", "dim": dim, "aggregation": "mean"}, 1)
    torch.manual_seed(0)
    model = TextEmbedder.from_backbone("minilm", out_dim=dim, hidden_dim=1024, audio_encoder="bench")
    rdir = state.run_dir("bench")
    model.save_pretrained(rdir / "best")
    (rdir / "run.json").write_text(
        '{"run": "bench", "audio_encoder": "bench", "manifest": "lib", "manifest_path": "%s", "embeddings": "%s", '
        '"status": "complete"}' % (state.manifest_path("lib"), spath))
    export_text_onnx(model, export_dir(state, "bench", "best"), weights=weights_identity(rdir / "best"))
    search(state, SearchConfig(query="warm-up builds the index", k=1))


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, max RSS MB, stdout) of one fresh process under /usr/bin/time -v.

    ``cwd`` is the checkout: ``python -m`` puts the working directory ahead of PYTHONPATH.
    """
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss_kb = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): (\S+)", proc.stderr).group(1)) for k in ("User", "System"))
    return seconds, cpu, rss_kb / 1024, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=200, help="store dim (MusiCNN mean: 200)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--before", type=Path, default=None, help="a checkout whose search is today's path")
    ap.add_argument("--state", type=Path, default=None, help="keep (and reuse) the library state here")
    args = ap.parse_args()
    print(f"cpus available: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="mtx-cold-") as scratch:
        tmp = str(args.state or scratch)
        if not (Path(tmp) / "index").exists():
            make_state(Path(tmp), args.tracks, args.dim)
        base = [sys.executable, "-m", "musiccli", "--state-dir", tmp, "search", "dark metal", "-k", "10", "--json"]
        paths = {"onnx": (ROOT, base), "torch": (ROOT, [*base, "--query-runtime", "torch"])}
        if args.before is not None:
            paths["before"] = (args.before, base)
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in paths}
        for _ in range(args.reps):
            for name, (root, cmd) in paths.items():
                env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
                wall, cpu, rss, out = timed(cmd, env, root)
                if name != "before" and f'"query_runtime": "{name}"' not in out:
                    raise SystemExit(f"{name}: the search did not report query_runtime {name}")
                if '"hits"' not in out:
                    raise SystemExit(f"{name}: no hits in the output:\n{out[-1000:]}")
                results[name].append((wall, cpu, rss))
    print(f"{args.tracks} tracks x {args.dim} dims, median of {args.reps} cold processes each, "
          f"load average now {os.getloadavg()[0]:.1f}")
    print("(on a shared machine wall time includes waiting for a core; CPU = user + system time)")
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        rss = statistics.median(r[2] for r in rows)
        target = f" | target <= 1.5 s and <= 400 MB: {'OK' if wall <= 1.5 and rss <= 400 else 'MISS'}" \
            if name == "onnx" else ""
        print(f"{name:>7}: wall {wall:5.2f} s (all: {', '.join(f'{r[0]:.2f}' for r in rows)}) | CPU {cpu:5.2f} s | "
              f"max RSS {rss:6.0f} MB{target}")


if __name__ == "__main__":
    main()
