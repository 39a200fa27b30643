"""Writing a fabricated run's library (manifest + store rows keyed by content hash) as `mtx embed` leaves it."""

from __future__ import annotations

import numpy as np

from musiccli import store as store_mod
from musiccli.manifest import CONTENT_HASH, Record, write_manifest


def write_library(state, run: dict, records: list[Record], vectors: np.ndarray) -> None:
    """Replace ``run``'s manifest and store (a ``make_run`` dict) with ``records`` and their ``vectors``."""
    write_manifest(state.manifest_path(run["manifest"]), records)
    path = run["store"]
    store_mod.discard(path)
    store_mod.write_part(path, 0, [r.id for r in records], vectors, hashes=[r.extra[CONTENT_HASH] for r in records])
    store_mod.assemble(path, run["dim"], "float32", {"encoder": run["encoder"], "dim": run["dim"]}, 1)
    store_mod.remove_parts(path)
