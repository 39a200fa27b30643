"""The HDF5 embedding store: parts, assembly, and the streaming reader."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from musiccli import store
from musiccli.errors import MtxError


def _write_parts(path, rng, sizes=(5, 0, 7, 3), dim=6, windows=False):
    ids, rows, fails = [], [], []
    n = 0
    for i, k in enumerate(sizes):
        part_ids = [f"id{n + j}" for j in range(k)]
        vec = rng.standard_normal((k, dim)).astype(np.float32)
        win = [rng.standard_normal((j % 3 + 1, dim)).astype(np.float32) for j in range(k)] if windows else None
        failed = [(f"bad{i}", f"reason {i}")]
        store.write_part(path, i, part_ids, vec, failed=failed, windows=win)
        ids += part_ids
        rows.append(vec)
        fails += failed
        n += k
    return ids, np.concatenate(rows), fails


def test_parts_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "emb" / "m.h5"
    ids, rows, fails = _write_parts(path, rng)
    parts = store.committed_parts(path)
    assert sorted(parts) == [0, 1, 2, 3]
    assert [f for i in sorted(parts) for f in store.read_part_failures(parts[i])] == fails
    n = store.assemble(path, 6, "float32", {"encoder": "dsp", "dim": 6, "model_id": None}, n_parts=4)
    assert n == len(ids) == 15
    with store.EmbeddingStore(path) as s:
        assert s.ids == ids and len(s) == 15 and s.dim == 6
        assert s.encoder == "dsp" and s.attrs["dim"] == 6 and s.attrs["model_id"] == "" and s.attrs["count"] == 15
        np.testing.assert_array_equal(s.get(ids), rows)
        chunks = list(s.iter_chunks(size=4))
        assert [start for start, _ in chunks] == [0, 4, 8, 12]
        np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), rows)


def test_rows_any_order_and_duplicates(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "m.h5"
    _, rows, _ = _write_parts(path, rng)
    store.assemble(path, 6, "float32", {}, n_parts=4)
    with store.EmbeddingStore(path) as s:
        pos = np.array([9, 2, 2, 14, 0, 9])
        np.testing.assert_array_equal(s.rows(pos), rows[pos])
        assert s.rows([]).shape == (0, 6)
        np.testing.assert_array_equal(s.get(["id3", "id1"]), rows[[3, 1]])


def test_float16_storage(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "m.h5"
    _, rows, _ = _write_parts(path, rng)
    store.assemble(path, 6, "float16", {}, n_parts=4)
    with h5py.File(path) as f:
        assert f["embeddings"].dtype == np.float16
        assert f["embeddings"].chunks is not None and f["embeddings"].maxshape == (None, 6)
    with store.EmbeddingStore(path) as s:
        out = s.rows(np.arange(len(s)))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, rows.astype(np.float16).astype(np.float32))


def test_mean_std_matches_numpy(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "m.h5"
    _, rows, _ = _write_parts(path, rng, sizes=(40, 33, 27))
    store.assemble(path, 6, "float32", {}, n_parts=3)
    with store.EmbeddingStore(path) as s:
        mean, std = s.mean_std(chunk=7)
        np.testing.assert_allclose(mean, rows.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std, rows.astype(np.float64).std(0, ddof=1), rtol=1e-5)
        sel = np.array([50, 3, 77, 10, 11])
        m2, s2 = s.mean_std(positions=sel, chunk=2)
        np.testing.assert_allclose(m2, rows[sel].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s2, rows[sel].astype(np.float64).std(0, ddof=1), rtol=1e-5)


def test_default_chunks_are_sized_in_bytes_not_rows(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    path = tmp_path / "m.h5"
    _, rows, _ = _write_parts(path, rng, sizes=(40, 33, 27))
    store.assemble(path, 6, "float32", {}, n_parts=3)
    # 6 dims: a 240-byte budget is 10 float32 rows per read, and 2 rows for mean_std's 16 bytes per value.
    monkeypatch.setattr(store, "READ_BYTES", 240)
    seen = []
    real_rows = store.EmbeddingStore.rows

    def spy(self, positions):
        seen.append(len(positions))
        return real_rows(self, positions)

    monkeypatch.setattr(store.EmbeddingStore, "rows", spy)
    with store.EmbeddingStore(path) as s:
        assert [len(c) for _, c in s.iter_chunks()] == [10] * 10
        mean, std = s.mean_std()
        assert set(seen) == {2}
        np.testing.assert_allclose(mean, rows.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std, rows.astype(np.float64).std(0, ddof=1), rtol=1e-5)
    # MERT's 76,800-d statistics: a few dozen rows per read, not 4,096 (1.3 GB).
    assert store.rows_for_bytes(76_800 * 16, 64 << 20) == 54


def test_windows_kept_with_offsets(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "m.h5"
    _write_parts(path, rng, sizes=(3, 2), windows=True)
    store.assemble(path, 6, "float32", {}, n_parts=2, keep_windows=True)
    with h5py.File(path) as f:
        offs = f["window_offsets"][()]
        assert len(offs) == 6 and offs[0] == 0 and offs[-1] == len(f["windows"])
        assert list(np.diff(offs)) == [1, 2, 3, 1, 2]


def test_assemble_refuses_missing_parts_and_discard(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "m.h5"
    _write_parts(path, rng, sizes=(2, 2))
    with pytest.raises(MtxError, match="1 part\\(s\\) missing"):
        store.assemble(path, 6, "float32", {}, n_parts=3)
    assert not path.exists()
    with pytest.raises(MtxError, match="dim"):
        store.assemble(path, 5, "float32", {}, n_parts=2)
    assert not path.exists() and not list(path.parent.glob(".tmp-*"))
    store.assemble(path, 6, "float32", {}, n_parts=2)
    store.discard(path)
    assert not path.exists() and not store.parts_dir(path).exists()


def test_reader_errors(tmp_path):
    with pytest.raises(MtxError, match="not found"):
        store.EmbeddingStore(tmp_path / "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(MtxError, match="not a valid embedding store"):
        store.EmbeddingStore(bad)


def test_reader_error_closes_the_file(tmp_path):
    """An HDF5 file without our datasets is refused, and the refused file is not left open."""
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("something", data=np.zeros(3))
    with pytest.raises(MtxError, match="not a valid embedding store") as refused:
        store.EmbeddingStore(other)
    assert refused.value.hint  # the error (and its traceback) stays alive while the file is reused
    # h5py refuses to truncate a file that this process still holds open
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(1))
