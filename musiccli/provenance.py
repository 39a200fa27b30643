"""What a run learned from, and the one-line warning when it is used on music from elsewhere.

`mtx train` records ``training_data`` in ``run.json``: the training manifest (name and
hash) and, per source (a record's ``dataset``), how many training pairs came from it.
`mtx export` copies it into the model card and ``training_data.json``. `search` and
`eval` compare it with the sources of the tracks they rank: a run that never saw a
source has learned nothing about it, and a run trained only on synthetic clips ranks
real music near chance, so the user is told once, in one line, instead of getting
that result silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .manifest import Record, manifest_hash, read_manifest

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
REAL_DATA_STEPS = "`mtx download musiccaps`, `mtx unify`, `mtx train`"
NATIVE = "`mtx search --text-model native` with clap or muq"


def source_of(item: Record | Mapping[str, Any]) -> str:
    """The source a record (or a search index item) came from: its ``dataset``."""
    dataset = item.get("dataset") if isinstance(item, Mapping) else item.dataset
    return str(dataset) if dataset else UNKNOWN


def source_counts(items: Iterable[Record | Mapping[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(source_of(i) for i in items).items()))


def training_data(manifest: str, digest: str, records: Iterable[Record], split: str = "train") -> dict[str, Any]:
    """The ``training_data`` entry of ``run.json``: what the run's pairs were drawn from."""
    records = list(records)
    sources = source_counts(records)
    # Which of them are generated audio, decided now from the source registry, so that reading it
    # back (a cold search) needs no registry.
    return {"manifest": manifest, "manifest_hash": digest, "split": split, "tracks": len(records),
            "sources": sources, "synthetic": [s for s in sources if is_synthetic(s)]}


def run_training_data(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """``run.json``'s training data. Runs trained before it was recorded get it rebuilt from their
    manifest's train split, if that manifest is still the one they were trained on; else None."""
    recorded = meta.get("training_data")
    if isinstance(recorded, Mapping) and recorded.get("sources"):
        return dict(recorded)
    path = Path(str(meta.get("manifest_path") or ""))
    if not path.is_file() or not meta.get("manifest_hash") or manifest_hash(path) != meta.get("manifest_hash"):
        return None
    train = [r for r in read_manifest(path) if r.split == "train"]
    return training_data(str(meta.get("manifest") or path.stem), str(meta["manifest_hash"]), train)


def is_synthetic(source: str) -> bool:
    from .sources import SOURCES

    factory = SOURCES.get(source)
    return bool(factory is not None and getattr(factory.info, "synthetic", False))


def describe(sources: Mapping[str, int], synthetic: Iterable[str] = ()) -> str:
    """"synth (1000 synthetic clips)", "fma (800 tracks), folder (12 tracks)"."""
    generated = set(synthetic)
    return ", ".join(f"{s} ({n} {'synthetic clips' if s in generated else 'tracks'})" for s, n in sources.items())


def unseen_sources_warning(run: str, trained: Mapping[str, Any] | None, used_on: Mapping[str, int]) -> str | None:
    """One line when ``used_on`` (source -> tracks ranked) holds sources the run was not trained on."""
    seen = dict((trained or {}).get("sources") or {})
    if not seen:
        return None  # nothing recorded: no claim either way
    unseen = {s: n for s, n in used_on.items() if s not in seen}
    if not unseen:
        return None
    synthetic = set((trained or {}).get("synthetic") or ())
    learned = describe(seen, synthetic)
    if set(seen) <= synthetic:
        return (f"run {run} was trained only on {learned}; on other music expect near-chance results. "
                f"Train on real captioned data ({REAL_DATA_STEPS}) or use {NATIVE}.")
    mix = ",".join(sorted(set(seen) | set(unseen)))
    return (f"run {run} was trained only on {learned}; it has not seen {describe(unseen)}, so expect weaker "
            f"results there. Train on a mix (`mtx unify --datasets {mix}`, `mtx train`) or use {NATIVE}.")


__all__ = ["describe", "is_synthetic", "run_training_data", "source_counts", "source_of", "training_data",
           "unseen_sources_warning"]
