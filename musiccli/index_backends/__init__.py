"""Search backends over an index's vectors: one module per kind, found through :data:`BACKENDS`.

Every index folder holds ``vectors.npy`` (float32 unit rows, the exact copy) written by
`mtx search`; a backend adds what it needs next to it and answers queries with
``search(q, k) -> (rows, scores)``, rows indexing the index's ``ids.json``.

- ``exact``: a memory-mapped float16 copy is scanned block by block; the best candidates are
  re-scored exactly against the float32 rows. Default for libraries below :data:`ANN_THRESHOLD`.
- ``ann``: a FAISS ``IVF,SQ8`` index (coarse quantiser + 8-bit codes) with exact float32 re-rank.
- ``milvus``: a Milvus collection (Milvus Lite file by default, a server or cluster by ``http://`` URI).

Adding a backend = one module with ``NAME``, ``build`` and ``open`` + one line here.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import unknown_choice

ANN_THRESHOLD = 200_000   # tracks; above it `--backend auto` builds an ANN index
CHOICES = ("auto", "exact", "ann", "milvus")


def _modules() -> dict[str, str]:
    # Module paths, imported on use: faiss and pymilvus are optional and slow to import.
    return {"exact": "exact", "ann": "faiss_ann", "milvus": "milvus"}


def get_backend(name: str) -> ModuleType:
    from importlib import import_module

    mods = _modules()
    if name not in mods:
        raise unknown_choice("search backend", name, [c for c in CHOICES if c != "auto"])
    return import_module(f"{__name__}.{mods[name]}")


def resolve_backend(name: str, n_tracks: int) -> str:
    """``auto`` -> exact below :data:`ANN_THRESHOLD` tracks, ann above."""
    if name == "auto":
        return "ann" if n_tracks > ANN_THRESHOLD else "exact"
    if name not in CHOICES:
        raise unknown_choice("search backend", name, CHOICES)
    return name
