"""MusiCNN port: TF checkpoint reader, conversion to safetensors, parity with TF outputs.

Parity with musicnn's own TensorFlow output is tests/test_musicnn_reference.py (the
whole embed stage against ``fixtures/musicnn_tf_reference.npz``). Tests that need the
trained weights skip when the ``musicnn`` wheel (``pip install --no-deps musicnn``)
is not installed.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from musiccli.encoders import musicnn_torch as mt
from musiccli.errors import MtxError

TOL = 1e-3


@pytest.fixture(scope="module")
def musicnn_installed() -> None:
    if importlib.util.find_spec("musicnn") is None:
        pytest.skip("musicnn wheel not installed (pip install --no-deps musicnn)")


@pytest.fixture(scope="module")
def converted_dir(musicnn_installed: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("musicnn_cache")
    for name in mt.MODELS:
        mt.convert_checkpoint(name, cache / f"{name}.safetensors")
    return cache


# ----------------------------------------------------------------------------- a tiny TF checkpoint writer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int, payload: bytes | int) -> bytes:
    key = _varint(num << 3 | wire)
    if wire == 0:
        return key + _varint(int(payload))  # type: ignore[arg-type]
    if wire == 5:
        return key + struct.pack("<I", payload)
    assert isinstance(payload, bytes)
    return key + _varint(len(payload)) + payload


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 2) -> bytes:
    """LevelDB block: prefix-compressed keys with a restart point every few entries."""
    out, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(prev)) and key[shared] == prev[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        prev = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def _snappy_literal(data: bytes) -> bytes:
    """A valid (literal-only) Snappy encoding of ``data``."""
    out = bytearray(_varint(len(data)))
    for i in range(0, len(data), 60):
        chunk = data[i : i + 60]
        out.append((len(chunk) - 1) << 2)
        out += chunk
    return bytes(out)


def _table(entries: list[tuple[bytes, bytes]], per_block: int, snappy: bool) -> bytes:
    out, index = bytearray(), []

    def put(contents: bytes, compress: bool) -> bytes:
        ctype = 1 if compress else 0
        stored = _snappy_literal(contents) if compress else contents
        handle = _varint(len(out)) + _varint(len(stored))
        out.extend(stored + bytes([ctype]) + struct.pack("<I", mt.mask_crc32c(mt.crc32c(stored + bytes([ctype])))))
        return handle

    for i in range(0, len(entries), per_block):
        chunk = entries[i : i + per_block]
        index.append((chunk[-1][0], put(_block(chunk), snappy)))
    meta = put(_block([]), False)
    idx = put(_block(index, restart_interval=1), snappy)
    footer = (meta + idx).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    return bytes(out) + footer


def _write_checkpoint(prefix: str, tensors: dict[str, np.ndarray], snappy: bool = False) -> None:
    """A TF V2 checkpoint: tensors alternate between two data shards."""
    dtypes = {np.dtype("float32"): 1, np.dtype("int64"): 9, np.dtype("float16"): 19}
    shards = [bytearray(), bytearray()]
    records = [(b"", _field(1, 0, 2) + _field(2, 0, 0) + _field(3, 2, _field(1, 0, 1)))]
    for i, name in enumerate(sorted(tensors)):
        arr = np.asarray(tensors[name])  # (ascontiguousarray would make a scalar 1-d)
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        shard = i % 2
        shape = b"".join(_field(2, 2, _field(1, 0, d)) for d in arr.shape)
        entry = (
            _field(1, 0, dtypes[arr.dtype])
            + _field(2, 2, shape)
            + (_field(3, 0, shard) if shard else b"")
            + _field(4, 0, len(shards[shard]))
            + _field(5, 0, len(raw))
            + _field(6, 5, mt.mask_crc32c(mt.crc32c(raw)))
        )
        shards[shard] += raw
        records.append((name.encode(), entry))
    Path(prefix + ".index").write_bytes(_table(records, per_block=3, snappy=snappy))
    for s, data in enumerate(shards):
        Path(f"{prefix}.data-{s:05d}-of-00002").write_bytes(bytes(data))


def _tiny_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "batch_normalization/beta": rng.standard_normal(3).astype(np.float32),
        "batch_normalization/gamma": rng.standard_normal(3).astype(np.float32),
        "batch_normalization_1/moving_mean": rng.standard_normal(4).astype(np.float32),
        "conv2d/kernel": rng.standard_normal((7, 3, 1, 5)).astype(np.float32),
        "conv2d/bias": rng.standard_normal(5).astype(np.float32),
        "global_step": np.array(12345, dtype=np.int64),
        "half": rng.standard_normal((2, 2)).astype(np.float16),
    }


# ----------------------------------------------------------------------------- reader


def test_crc32c_known_vector() -> None:
    assert mt.crc32c(b"123456789") == 0xE3069283
    assert mt.crc32c(b"6789", mt.crc32c(b"12345")) == 0xE3069283


def test_snappy_literals_and_copies() -> None:
    # "abcd" literal, copy-1 (len 4, off 4), copy-2 overlapping (len 6, off 2), literal "!"
    stream = _varint(15) + bytes([3 << 2]) + b"abcd" + bytes([0b000_000_01, 4]) + bytes([(6 - 1) << 2 | 2, 2, 0])
    stream += bytes([0]) + b"!"
    assert mt.snappy_decompress(stream) == b"abcdabcdcdcdcd!"
    with pytest.raises(mt.CheckpointFormatError):
        mt.snappy_decompress(_varint(4) + bytes([0b000_000_01, 9]))  # copy before any output


@pytest.mark.parametrize("snappy", [False, True])
def test_read_handbuilt_checkpoint(tmp_path: Path, snappy: bool) -> None:
    tensors = _tiny_tensors()
    prefix = str(tmp_path / "model.ckpt-7")
    _write_checkpoint(prefix, tensors, snappy=snappy)
    entries = mt.list_tf_checkpoint(prefix)
    assert sorted(entries) == sorted(tensors)
    assert entries["conv2d/kernel"].shape == (7, 3, 1, 5)
    got = mt.read_tf_checkpoint(prefix)
    for name, arr in tensors.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape
        np.testing.assert_array_equal(got[name], arr)
    subset = mt.read_tf_checkpoint(prefix, names=["global_step"])
    assert list(subset) == ["global_step"] and int(subset["global_step"]) == 12345
    with pytest.raises(mt.CheckpointFormatError, match="no tensor"):
        mt.read_tf_checkpoint(prefix, names=["nope"])


def test_reader_detects_corruption(tmp_path: Path) -> None:
    prefix = str(tmp_path / "ckpt")
    _write_checkpoint(prefix, _tiny_tensors())
    data = Path(prefix + ".data-00000-of-00002")
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(mt.CheckpointFormatError, match="CRC"):
        mt.read_tf_checkpoint(prefix)
    mt.read_tf_checkpoint(prefix, verify=False)  # still readable when asked not to check
    index = Path(prefix + ".index")
    idx = bytearray(index.read_bytes())
    idx[-1] ^= 0xFF  # magic
    index.write_bytes(bytes(idx))
    with pytest.raises(mt.CheckpointFormatError, match="magic"):
        mt.list_tf_checkpoint(prefix)


def test_legacy_v1_and_missing_checkpoints(tmp_path: Path) -> None:
    v1 = tmp_path / "model.ckpt"
    v1.write_bytes(b"\0" * 64)
    with pytest.raises(MtxError, match="V1"):
        mt.read_tf_checkpoint(v1)
    with pytest.raises(MtxError, match="no checkpoint index"):
        mt.read_tf_checkpoint(tmp_path / "absent")


def test_read_musicnn_checkpoint(musicnn_installed: None) -> None:
    prefix = mt.musicnn_checkpoint_prefix("MSD_musicnn")
    entries = mt.list_tf_checkpoint(prefix)
    assert len(entries) == 150  # model variables + Adam slots + beta powers
    model_vars = [n for n in entries if "Adam" not in n and not n.endswith("_power")]
    assert len(model_vars) == 64  # 11 BN x 4 + 8 conv x 2 + 2 dense x 2
    shapes = {
        "conv2d/kernel": (7, 38, 1, 204),
        "conv2d_1/kernel": (7, 67, 1, 204),
        "conv2d_2/kernel": (128, 1, 1, 51),
        "conv2d_5/kernel": (7, 561, 1, 64),
        "batch_normalization_9/moving_variance": (1506,),
        "dense/kernel": (1506, 200),
        "dense_1/kernel": (200, 50),
    }
    for name, shape in shapes.items():
        assert entries[name].shape == shape and entries[name].dtype == 1
    got = mt.read_tf_checkpoint(prefix, names=["dense_1/bias", "batch_normalization/moving_variance"])
    assert got["dense_1/bias"].shape == (50,) and np.isfinite(got["dense_1/bias"]).all()
    assert float(got["batch_normalization/moving_variance"][0]) > 0


# ----------------------------------------------------------------------------- conversion


def test_convert_is_atomic_and_cached(musicnn_installed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    model = mt.load_musicnn("MTT_musicnn", cache)
    target = cache / "MTT_musicnn.safetensors"
    assert [p.name for p in cache.iterdir()] == [target.name]  # no temp file left behind
    assert isinstance(model, mt.MusiCNN) and not model.training

    def fail(*args: object, **kwargs: object) -> Path:
        raise AssertionError("should load the cached conversion")

    monkeypatch.setattr(mt, "convert_checkpoint", fail)
    again = mt.load_musicnn("MTT_musicnn", cache)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

    # A failed write leaves the previous file intact and no temp file.
    monkeypatch.undo()
    before = target.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.numpy.save_file", boom)
    with pytest.raises(OSError):
        mt.convert_checkpoint("MTT_musicnn", target)
    assert target.read_bytes() == before
    assert [p.name for p in cache.iterdir()] == [target.name]


def test_missing_package_and_bad_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MtxError) as err:
        mt.convert_checkpoint("MSD_musicnn", tmp_path / "x.safetensors")
    assert err.value.hint == "pip install --no-deps musicnn"
    with pytest.raises(MtxError, match="unsupported"):
        mt.load_musicnn("MSD_vgg", tmp_path)


def test_tag_names() -> None:
    assert len(mt.tag_names("MSD_musicnn")) == 50 and mt.tag_names("MSD_musicnn")[0] == "rock"
    assert len(mt.tag_names("MTT_musicnn")) == 50 and mt.tag_names("MTT_musicnn")[0] == "guitar"


def test_forward_shapes_and_short_input() -> None:
    model = mt.MusiCNN()
    probs, emb = model(torch.randn(3, mt.N_FRAMES, mt.N_MELS))
    assert probs.shape == (3, 50) and emb.shape == (3, 200)
    assert ((probs >= 0) & (probs <= 1)).all()
    with pytest.raises(ValueError):
        model.embed_audio(torch.zeros(2, 1000))


def _literal_forward(model: mt.MusiCNN, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain layer-by-layer graph (training-mode code path) with eval-mode batch norm."""
    model.train()
    for module in model.modules():  # BN keeps running statistics, as in eval
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        return model(patches)
    finally:
        model.eval()


def _randomise_bn(model: mt.MusiCNN, seed: int) -> None:
    """Give every BN a mix of negative and positive scales, like the trained weights."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.weight.data = torch.randn(n, generator=g)
            module.bias.data = torch.randn(n, generator=g) * 0.1
            module.running_mean.data = torch.randn(n, generator=g) * 0.1
            module.running_var.data = torch.rand(n, generator=g) + 0.5


@pytest.mark.slow
def test_fast_front_end_equals_literal_graph() -> None:
    """Eval mode pools over frequency before bias/ReLU/BN (sign-folded filters); same result."""
    torch.manual_seed(0)
    model = mt.MusiCNN()
    _randomise_bn(model, seed=1)
    assert any((blk.signed_weight()[1] < 0).any() and (blk.signed_weight()[1] > 0).any()
               for blk in model._front_blocks())
    patches = torch.rand(mt.FRONT_CHUNK + 3, mt.N_FRAMES, mt.N_MELS) * 3  # spans several chunks
    with torch.inference_mode():
        probs, emb = model(patches)
        ref_probs, ref_emb = _literal_forward(model, patches)
    torch.testing.assert_close(emb, ref_emb, atol=1e-4, rtol=0)
    torch.testing.assert_close(probs, ref_probs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_name", mt.MODELS)
@pytest.mark.slow
def test_fast_forward_equals_literal_graph_with_weights(converted_dir: Path, model_name: str) -> None:
    model = mt.load_musicnn(model_name, converted_dir)
    wave = torch.from_numpy(np.random.default_rng(3).standard_normal((5, mt.WINDOW_SAMPLES)).astype(np.float32) * 0.1)
    with torch.inference_mode():
        patches = model.logmel(wave)[:, : mt.N_FRAMES]
        probs, emb = model(patches)
        ref_probs, ref_emb = _literal_forward(model, patches)
    torch.testing.assert_close(emb, ref_emb, atol=1e-4, rtol=0)
    torch.testing.assert_close(probs, ref_probs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("orig_sr", [8000, 24000, 48000, 22050])
def test_kaiser_resampler_products_equal_the_direct_sums(orig_sr: int) -> None:
    # Both ways of applying the per-phase kernels (FFT polyphase for short periods, a strided product
    # otherwise) against the definition: out[m * p_out + p] = padded[m * p_in : + width] . kernel[p].
    import math

    from musiccli import kaiser_resample as kr

    kernels, _, left, right = kr._phase_kernels(orig_sr, 16_000)
    g = math.gcd(orig_sr, 16_000)
    p_in, p_out = orig_sr // g, 16_000 // g
    width, m_total = kernels.shape[1], 37
    padded = np.random.default_rng(orig_sr).standard_normal(left + m_total * p_in + right + width)
    direct = np.array([padded[m * p_in:m * p_in + width] @ kernels[p] for m in range(m_total) for p in range(p_out)])
    np.testing.assert_allclose(kr._strided(padded, kernels, p_in, p_out, m_total), direct, rtol=0, atol=1e-12)
    if p_in < width:
        np.testing.assert_allclose(kr._polyphase(padded, kernels, p_in, p_out, m_total), direct, rtol=0, atol=1e-12)
