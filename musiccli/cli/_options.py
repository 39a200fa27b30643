"""Shared option aliases (Annotated), so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import names
from ..names import completer, listed

# Registry names come from musiccli.names (no torch import), so --help and completion stay fast.
_complete_encoders = completer(names.AUDIO_ENCODERS)
_complete_sources = completer(names.SOURCES)
_complete_losses = completer(names.LOSSES)
_complete_backbones = completer(names.TEXT_BACKBONES)
_complete_aggregations = completer(names.AGGREGATIONS)


def _state_from_env():
    from ..state import StateDir

    return StateDir.resolve(None)


def _complete_manifests(incomplete: str) -> list[str]:
    return [n for n in _state_from_env().list_manifests() if n.startswith(incomplete)]


def _complete_runs(incomplete: str) -> list[str]:
    return [n for n in _state_from_env().list_runs() if n.startswith(incomplete)]


Continue = Annotated[bool, typer.Option("--continue", help="Resume an interrupted run of this stage.")]
Force = Annotated[bool, typer.Option("--force", help="Discard previous output of this stage and start over.")]
RetryFailed = Annotated[bool, typer.Option("--retry-failed",
                                           help="Retry the items that failed last time (same as --continue).")]
MaxFailureRate = Annotated[float, typer.Option("--max-failure-rate", min=0.0, max=1.0,
                                               help="Fail the stage (exit 1) when more than this fraction of "
                                                    "items fail.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Device = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda or mps.",
                                     autocompletion=completer(names.DEVICES))]
Precision = Annotated[str, typer.Option("--precision", help="auto (bf16 / fp16 / fp32 by device), fp32, bf16 or fp16.",
                                        autocompletion=completer(names.PRECISIONS))]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (results are reproducible for a given seed).")]
AudioEncoder = Annotated[str, typer.Option("--audio-encoder", "-e",
                                           help=f"Audio encoder: {listed(names.AUDIO_ENCODERS)}.",
                                           autocompletion=_complete_encoders)]
Manifest = Annotated[str | None, typer.Option("--manifest", "-m",
                                              help="Manifest name in the state dir (looked up first), or a path "
                                                   "to a .json file; default: newest.",
                                              autocompletion=_complete_manifests)]
Run = Annotated[str | None, typer.Option("--run", "-r", help="Run name; default: newest trained run.",
                                         autocompletion=_complete_runs)]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size.")]
NumWorkers = Annotated[int, typer.Option("--workers", "--num-workers", min=0, help="Worker processes.")]
Source = Annotated[str, typer.Argument(help=f"Dataset source: {listed(names.SOURCES)}.",
                                       autocompletion=_complete_sources)]
Checkpoint = Annotated[str, typer.Option("--checkpoint", help="Which checkpoint of the run: best or latest.",
                                         autocompletion=completer(names.CHECKPOINTS))]
OutPath = Annotated[Path | None, typer.Option("--out", "-o", help="Output path.")]
