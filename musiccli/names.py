"""Registry names for help text and shell completion, importable without torch.

The registries themselves (``sources.SOURCES``, ``encoders.AUDIO_ENCODERS``,
``training.losses.LOSSES``, ...) import numpy, torch or transformers, which would turn
``mtx --help`` from 0.3 s into seconds. These tuples mirror them; ``tests/test_names.py``
fails when a registry gains or loses a name that is not listed here, so the help cannot
drift from what the code accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

SOURCES = ("audiomuse", "fma", "folder", "jamendo-maxcaps", "mtg-jamendo", "musicbench", "musiccaps", "song-describer",
           "suno", "synth")
AUDIO_ENCODERS = ("audiomuse-clap", "audiomuse-lyrics", "audiomuse-mulan", "audiomuse-musicnn", "clap", "dsp", "mert",
                  "music2latent", "musicgen", "muq", "musicnn", "student")
NATIVE_TEXT_ENCODERS = ("clap", "muq")          # audio encoders with their own text tower
LOSSES = ("combined", "distillation", "infonce", "listmle", "mse", "triplet")
TEXT_BACKBONES = ("minilm", "roberta", "distilbert")  # short names; a Hub id or a local path also works
AGGREGATIONS = ("mean", "stats", "none")
POOLINGS = ("mean", "cls")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = ("float32", "float16")
CHECKPOINTS = ("best", "latest")
SPLITS = ("train", "val", "test")
LIBRARY_MANIFEST = "library"                         # the manifest `mtx sync` keeps, `train --library` reads
INDEX_BACKENDS = ("auto", "exact", "ann", "milvus")  # index_backends.CHOICES
QUERY_RUNTIMES = ("auto", "onnx", "torch")           # search.QUERY_RUNTIMES
PROMPTS = ("raw", "clap", "ensemble")                # zeroshot.PROMPTS
MEDIA_SERVERS = ("jellyfin", "navidrome")            # search --server


def listed(names: Sequence[str]) -> str:
    """``a, b or c`` for help text."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def completer(names: Sequence[str]) -> Callable[[str], list[str]]:
    """A shell-completion callback over a fixed list of names."""
    def complete(incomplete: str) -> list[str]:
        return [n for n in names if n.startswith(incomplete)]
    return complete
