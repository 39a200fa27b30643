"""Held-out paraphrase queries: do sentences people type find the right music?

Tag ROC-AUC and caption R@10 reward a model for the words its training text used. People type
other things: a scene ("warehouse rave at 4am"), a period ("seventeen hundreds chamber
ensemble"), an instrument line, a mood, a negation ("no drums at all"), slang ("riddim"). This
benchmark holds such queries for the styles of the demo corpus, each labelled with the styles
it should return, and reports P@10 (the share of the top 10 test clips whose style is one of the
query's styles) for several training-text representations trained side by side.

The queries were written without looking at the caption templates, and they are used for
nothing else: no training run and no model selection reads them (the best checkpoint is picked
by validation R@10 on the corpus's own captions). The script asserts that no query occurs,
case-insensitively, inside any text a run trained on (captions, alternative captions, tag words,
and every text each representation drew, epoch by epoch).

Prepare the demo corpus first (1000 procedural clips, MusiCNN with its real pretrained weights):

    export MTX_HOME=/tmp/paraphrase
    mtx download synth --n 1000 --duration 10 --seed 0 && mtx unify -d synth --name demo
    mtx embed --audio-encoder musicnn --manifest demo
    python benchmarks/paraphrase_queries.py --manifest demo --out paraphrase.json --markdown paraphrase.md

Every representation trains MiniLM with the same seed, epochs, batch size and learning rate; only
the training text differs, and the settings are the demo's (8 epochs, batch 64, lr 1e-4), so the
winner can be the demo's default. On 2 shared CPU cores a run takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (query, styles it should return), per style set. ``synth``: the demo corpus's ten styles.
QUERIES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "synth": (
        # scenes
        ("headbanging in a sweaty mosh pit", ("metal",)),
        ("warehouse rave at 4am", ("techno",)),
        ("floating through outer space, nothing but drifting sound", ("ambient",)),
        ("smoky basement bar where a trio plays until closing time", ("jazz",)),
        ("music for a candle-lit ball in an old European palace", ("baroque",)),
        ("a cypher on the street corner, someone freestyling", ("hip hop",)),
        ("sitting around a bonfire with a six-string", ("folk",)),
        ("beach bar in Kingston on a sunny afternoon", ("reggae",)),
        ("salsa night in Havana", ("latin",)),
        ("a lone grand piano on a concert stage", ("classical piano",)),
        # eras and places
        ("eighties thrash, crank it to eleven", ("metal",)),
        ("Detroit and Berlin club sound of the nineties", ("techno",)),
        ("seventies airport music in the spirit of Brian Eno", ("ambient",)),
        ("Blue Note records from the fifties", ("jazz",)),
        ("something from the seventeen hundreds for a chamber ensemble", ("baroque",)),
        ("golden era East Coast instrumental", ("hip hop",)),
        ("sixties coffeehouse revival from Greenwich Village", ("folk",)),
        ("seventies roots sound from Trenchtown", ("reggae",)),
        ("old Cuban son and mambo records", ("latin",)),
        ("romantic-era recital repertoire, Chopin nocturne feel", ("classical piano",)),
        # instruments
        ("screaming guitars over thunderous drumming", ("metal",)),
        ("a drum machine thumping with a squelchy bassline", ("techno",)),
        ("long held synthesizer chords that barely move", ("ambient",)),
        ("upright bass and brushed cymbals behind a Rhodes", ("jazz",)),
        ("harpsichord like Johann Sebastian would have written", ("baroque",)),
        ("chopped samples and a fat kick and snare", ("hip hop",)),
        ("just an unplugged guitar, picked gently", ("folk",)),
        ("bubbly organ and choppy guitar on the upbeat", ("reggae",)),
        ("cowbell, bongos and a piano vamp", ("latin",)),
        ("solo keyboard played with a soft touch", ("classical piano",)),
        # moods
        ("angry, fast and brutal", ("metal",)),
        ("hypnotic and repetitive, made to keep people moving", ("techno",)),
        ("peaceful and dreamy, for meditation or yoga", ("ambient",)),
        ("elegant and ornate, like a royal court", ("baroque",)),
        ("warm and homespun, simple and honest", ("folk",)),
        ("hot and tropical, makes you want to move your hips", ("latin",)),
        ("wistful and tender, for a rainy evening alone", ("classical piano",)),
        # negations
        ("relaxing instrumental with no drums at all", ("ambient", "baroque", "classical piano")),
        ("a groove for dancing that is not electronic", ("latin", "reggae")),
        ("classical music that is not just a piano", ("baroque",)),
        ("heavy guitar music, nothing acoustic", ("metal",)),
        ("something acoustic, nothing plugged in or programmed", ("folk", "baroque", "classical piano")),
        # slang
        ("absolute bangers for the club", ("techno",)),
        ("a dusty beat for crate diggers, pure head nod", ("hip hop",)),
        ("dub-style riddim", ("reggae",)),
        ("shred and breakdowns, total face-melter", ("metal",)),
        ("chill lo-fi beats to study to", ("hip hop",)),
        ("swingin' cats blowing cool", ("jazz",)),
    ),
}

DEFAULT_REPS = "caption,stochastic,mixed,blend"


def query_set(name: str) -> tuple[list[str], list[tuple[str, ...]]]:
    pairs = QUERIES[name]
    return [q for q, _ in pairs], [styles for _, styles in pairs]


def assert_held_out(queries: Sequence[str], training_texts: Sequence[str]) -> None:
    """Fail if any query occurs (case-insensitively) inside a text some run trained on."""
    corpus = "\n".join(t.lower() for t in training_texts)
    leaked = [q for q in queries if q.lower() in corpus]
    if leaked:   # not an assert: `python -O` must not skip this check
        raise SystemExit(f"held-out queries found in training text: {leaked}")


def training_texts(records, reps: Sequence[str], epochs: int, seed: int) -> list[str]:
    """Every text a run could have read: captions, tag words, and each representation's draws."""
    from musiccli.training.data import _item_key
    from musiccli.training.textrep import draw_text, tag_text

    out: list[str] = []
    for r in records:
        out += [r.caption, *r.alt_captions, *(tag_text(t) for t in r.tags)]
    for rep in reps:
        if rep == "caption":
            continue
        for epoch in range(epochs):
            out += [draw_text(r, rep, _item_key(seed, epoch, i)) for i, r in enumerate(records)]
    return out


def _metrics(run_dir: Path) -> tuple[int, int | None, int]:
    """(optimizer steps, best epoch, epochs completed) from a run's metrics.jsonl."""
    steps, best, epochs = 0, None, 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train_loss" in row:
            steps = max(steps, int(row["step"]))
        if "epoch_train_loss" in row:
            epochs = max(epochs, int(row["epoch"]))
            if row.get("best"):
                best = int(row["epoch"])
    return steps, best, epochs


def train_and_eval(state, args, rep: str) -> dict[str, Any]:
    from musiccli.evaluate import EvalConfig, run_eval
    from musiccli.training import TrainConfig, run_train

    run = f"para-{rep}"
    cfg = TrainConfig(audio_encoder=args.encoder, manifest=args.manifest, run=run, text_rep=rep,
                      text_backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      freeze_layers=args.freeze_layers, seed=args.seed, device=args.device,
                      precision="fp32" if args.device == "cpu" else "auto", export=False)
    t0 = time.time()
    if not args.score_only:
        run_train(state, cfg)
    train_s = time.time() - t0
    steps, best_epoch, epochs_done = _metrics(state.run_dir(run))
    ev = run_eval(state, EvalConfig(run=run, split="test", checkpoint="best", device=args.device, seed=args.seed,
                                    plots=False))
    return {"run": run, "text_rep": rep, "train_seconds": None if args.score_only else train_s, "steps": steps,
            "best_epoch": best_epoch, "epochs_done": epochs_done, "results": ev.report["results"]}


def _save(path: Path | None, cells: list[dict[str, Any]]) -> None:
    if path:   # after every cell, so a long run that is stopped keeps what it measured
        path.write_text(json.dumps(cells, indent=1))


def _one_thread(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _cell(job: tuple[argparse.Namespace, str, list[str], list[tuple[str, ...]]]) -> dict[str, Any]:
    """Train, evaluate and score one representation (picklable for the process pool)."""
    from musiccli.demo import SENTENCE_QUERIES, style_precision
    from musiccli.state import StateDir

    args, rep, queries, labels = job
    logging.basicConfig(level=logging.WARNING)
    state = StateDir.resolve(args.state_dir)
    cell = train_and_eval(state, args, rep)
    sp = style_precision(state, cell["run"], queries, labels, k=args.k, device=args.device)
    cell["p10"] = sp.per_query
    cell["mean_p10"] = sp.mean
    cell["chance_mean_p10"] = sp.chance
    demo_q, demo_styles = zip(*SENTENCE_QUERIES)   # the demo's own check, for calibrating its target
    cell["demo_check_p10"] = style_precision(state, cell["run"], demo_q, demo_styles, k=args.k,
                                             device=args.device).mean
    m = cell["results"]["model"]
    print(f"{rep}: {cell['steps']} steps, best epoch {cell['best_epoch']}; sentence P@10 {sp.mean:.3f}, "
          f"tag ROC-AUC {m['tags']['roc_auc']:.3f}, t2m R@10 {m['text_to_music']['R@10']:.3f}",
          file=sys.stderr, flush=True)
    return cell


def markdown(cells: list[dict[str, Any]], queries: list[str], labels: list[tuple[str, ...]], meta: str) -> str:
    reps = [c["text_rep"] for c in cells]
    lines = [meta, "", "| text rep | mean P@10 (held-out sentences) | queries at P@10 = 0 | tag ROC-AUC | t2m R@10 "
             "| demo sentence check |", "|---|---|---|---|---|---|"]
    for c in cells:
        m = c["results"]["model"]
        lines.append(f"| {c['text_rep']} | {c['mean_p10']:.3f} | {sum(p == 0 for p in c['p10'])} | "
                     f"{m['tags']['roc_auc']:.3f} | {m['text_to_music']['R@10']:.3f} | {c['demo_check_p10']:.3f} |")
    for base in ("untrained", "random"):
        m = cells[0]["results"].get(base)
        if m:
            p = f"{cells[0]['chance_mean_p10']:.3f} (chance)" if base == "random" else "-"
            lines.append(f"| {base} baseline | {p} | - | "
                         f"{m['tags']['roc_auc']:.3f} | {m['text_to_music']['R@10']:.3f} | - |")
    lines += ["", "Per query (P@10 on the test split):", "",
              "| query | should return | " + " | ".join(reps) + " |", "|---|---|" + "---|" * len(reps)]
    for i, (q, styles) in enumerate(zip(queries, labels)):
        lines.append(f"| {q} | {', '.join(styles)} | " + " | ".join(f"{c['p10'][i]:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", type=Path, default=None, help="default: $MTX_HOME")
    ap.add_argument("--manifest", default="demo")
    ap.add_argument("--encoder", default="musicnn")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--text-reps", default=DEFAULT_REPS)
    ap.add_argument("--query-set", default="synth", choices=sorted(QUERIES))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--freeze-layers", type=int, default=0, help="freeze the lowest N backbone layers (CPU speed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=1, help="train the representations in N processes at once")
    ap.add_argument("--score-only", action="store_true",
                    help="do not train: score the existing para-<rep> runs' best checkpoints (e.g. runs stopped "
                         "early, all after the same number of epochs)")
    ap.add_argument("--out", type=Path, default=None, help="also write the cells as JSON here")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the tables as markdown here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from musiccli.manifest import read_manifest
    from musiccli.state import StateDir

    state = StateDir.resolve(args.state_dir)
    reps = args.text_reps.split(",")
    queries, labels = query_set(args.query_set)
    records = read_manifest(state.manifest_path(args.manifest))
    train = [r for r in records if r.split == "train"]
    assert_held_out(queries, training_texts(train, reps, args.epochs, args.seed))
    t0 = time.time()
    if args.jobs > 1:   # one process per representation; each run is independent and seeded alike
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_one_thread,
                                 initargs=(max(1, (os.cpu_count() or 1) // args.jobs),)) as pool:
            futures = [pool.submit(_cell, (args, rep, queries, labels)) for rep in reps]
            done: dict[str, dict[str, Any]] = {}
            for rep, fut in zip(reps, futures):
                done[rep] = fut.result()
                _save(args.out, list(done.values()))
            cells = [done[rep] for rep in reps]
    else:
        cells = []
        for rep in reps:
            cells.append(_cell((args, rep, queries, labels)))
            _save(args.out, cells)
    n_test = sum(r.split == "test" for r in records)
    done = sorted({c["epochs_done"] for c in cells})
    best = ", ".join(f"{c['text_rep']} {c['best_epoch']}" for c in cells)
    trained = (f"{args.epochs}-epoch schedule, stopped after epoch {'/'.join(map(str, done))} and scored "
               f"at the best-by-validation epoch ({best})"
               if args.score_only and done != [args.epochs] else f"{args.epochs} epochs")
    meta = (f"{len(queries)} held-out queries ({args.query_set}), {n_test} test clips; {trained}, batch "
            f"{args.batch_size}, lr {args.lr}, {args.backbone} (lowest {args.freeze_layers} layers frozen), "
            f"{args.encoder}, seed {args.seed}, device {args.device}; {time.time() - t0:.0f} s in all "
            f"({args.jobs} process{'es' if args.jobs > 1 else ''}).")
    md = markdown(cells, queries, labels, meta)
    print(md)
    if args.markdown:
        args.markdown.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
