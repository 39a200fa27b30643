"""MusiCNN (Pons & Serra, 2019) in pure PyTorch, with a TensorFlow-free checkpoint reader.

The ``musicnn`` wheel on PyPI ships trained TF1 checkpoints (``MSD_musicnn``,
``MTT_musicnn``) but needs TensorFlow 1.x-style code and librosa to run them. This
module re-implements the exact graph of ``musicnn/models.py::build_musicnn`` and
the preprocessing of ``musicnn/extractor.py::batch_data`` in PyTorch, and reads the
weights straight out of the bundled checkpoint files:

* :func:`read_tf_checkpoint` parses the TF "V2" tensor-bundle format (``.index`` is a
  LevelDB-style SSTable of ``BundleEntryProto`` records, ``.data-*`` holds raw bytes)
  with nothing but the standard library and numpy.
* :func:`convert_checkpoint` maps the TF variable names onto :class:`MusiCNN` and
  writes a safetensors file atomically; :func:`load_musicnn` caches that conversion.
* :class:`LogMelFrontend` reproduces ``librosa.feature.melspectrogram`` with the
  defaults musicnn relies on, plus musicnn's float16 round trip and ``log10(1e4*x+1)``.

Parity with musicnn 0.1.0's own TensorFlow extractor is tested end to end through the embed
stage by ``tests/test_musicnn_reference.py`` against ``tests/fixtures/musicnn_tf_reference.npz``
(each patch within 1e-3, track means at cosine >= 0.9999; measured: <= 3e-5 per patch);
``benchmarks/musicnn_parity.py`` prints the figures.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MtxError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# Constants copied from musicnn/configuration.py (musicnn 0.1.0) and extractor.py
# --------------------------------------------------------------------------------------

SAMPLE_RATE = 16000
FFT_SIZE = 512
FFT_HOP = 256
N_MELS = 96
#: librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1 == 186 + 1
N_FRAMES = 187
#: One 3 s model window at 16 kHz.
WINDOW_SAMPLES = 3 * SAMPLE_RATE
#: Samples before a window that its first (centered) STFT frame reaches back to.
CONTEXT_SAMPLES = FFT_SIZE // 2
EMBEDDING_DIM = 200
BN_EPSILON = 1e-3  # tf.compat.v1.layers.batch_normalization default
#: Windows per eval-mode front-end pass (~9 MB of unpooled conv map each): bounds memory for big batches.
FRONT_CHUNK = 16

MTT_LABELS: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)  # fmt: skip

MSD_LABELS: tuple[str, ...] = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill",
    "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental",
    "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy",
    "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop",
    "sad", "House", "happy",
)  # fmt: skip

#: Models this module can convert (the vgg variants are a different architecture).
MODELS: tuple[str, ...] = ("MSD_musicnn", "MTT_musicnn")
INSTALL_HINT = "pip install --no-deps musicnn"


def tag_names(model_name: str) -> tuple[str, ...]:
    """The 50 tag names, in output order, of ``model_name``."""
    _check_model_name(model_name)
    return MSD_LABELS if model_name.startswith("MSD") else MTT_LABELS


def _check_model_name(model_name: str) -> None:
    if model_name not in MODELS:
        raise MtxError(
            f"unsupported musicnn model {model_name!r}",
            hint=f"choose one of: {', '.join(MODELS)}",
        )


# --------------------------------------------------------------------------------------
# TensorFlow checkpoint (tensor bundle V2) reader
# --------------------------------------------------------------------------------------


class CheckpointFormatError(MtxError):
    """A checkpoint file is truncated, corrupt or in a format this reader does not handle."""


_TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB/TF table footer magic
_FOOTER_SIZE = 48  # two max-size BlockHandles (2 * 20 bytes) + 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte masked crc32c
_NO_COMPRESSION, _SNAPPY_COMPRESSION = 0, 1

# tensorflow/core/framework/types.proto DataType -> numpy dtype (little-endian).
_TF_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}
_DT_STRING = 7


def _make_crc32c_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``; pure Python, about 10-20 MB/s."""
    table = _CRC32C_TABLE
    c = crc ^ 0xFFFFFFFF
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def mask_crc32c(crc: int) -> int:
    """LevelDB/TF store CRCs "masked" so that CRCs of CRC-bearing data stay well-mixed."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns (value, new_pos)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError("truncated varint in checkpoint index")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointFormatError("varint too long in checkpoint index")


def _proto_fields(buf: bytes) -> Iterable[tuple[int, int, int | bytes]]:
    """Iterate the (field number, wire type, value) of a serialized protobuf message.

    Only what tensor-bundle protos use is needed: varints (0), fixed64 (1),
    length-delimited (2) and fixed32 (5).
    """
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value = bytes(buf[pos : pos + n])
            pos += n
        elif wire == 5:
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise CheckpointFormatError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise CheckpointFormatError("truncated protobuf message in checkpoint index")
        yield field, wire, value


@dataclass(frozen=True)
class TensorEntry:
    """One decoded ``BundleEntryProto``: where a tensor lives and what it is."""

    dtype: int  # TF DataType enum
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored
    sliced: bool  # partitioned variable (not supported for reading)


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims: list[int] = []
    for field, _, value in _proto_fields(buf):
        if field == 2:  # TensorShapeProto.dim
            size = 0
            for f2, _, v2 in _proto_fields(value):  # type: ignore[arg-type]
                if f2 == 1:  # Dim.size (int64, two's complement varint)
                    size = v2 - (1 << 64) if v2 >= 1 << 63 else v2  # type: ignore[operator]
            dims.append(int(size))
        elif field == 3 and value:  # unknown_rank
            raise CheckpointFormatError("checkpoint tensor has unknown rank")
    return tuple(dims)


def _parse_entry(buf: bytes) -> TensorEntry:
    dtype = shard_id = offset = size = 0
    shape: tuple[int, ...] = ()
    crc: int | None = None
    sliced = False
    for field, _, value in _proto_fields(buf):
        if field == 1:
            dtype = int(value)  # type: ignore[arg-type]
        elif field == 2:
            shape = _parse_shape(value)  # type: ignore[arg-type]
        elif field == 3:
            shard_id = int(value)  # type: ignore[arg-type]
        elif field == 4:
            offset = int(value)  # type: ignore[arg-type]
        elif field == 5:
            size = int(value)  # type: ignore[arg-type]
        elif field == 6:
            crc = int(value)  # type: ignore[arg-type]
        elif field == 7:
            sliced = True
    return TensorEntry(dtype, shape, shard_id, offset, size, crc, sliced)


def snappy_decompress(data: bytes) -> bytes:
    """Decompress a raw Snappy block (the format LevelDB/TF tables may use for blocks).

    TF writes index blocks with Snappy when it was built with it and the block shrinks
    by more than 12.5 %; the musicnn checkpoints are uncompressed, but other TF1
    checkpoints may not be.
    """
    length, pos = _varint(data, 0)
    out = bytearray()
    n = len(data)
    while pos < n:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            lit = tag >> 2
            if lit >= 60:
                nbytes = lit - 59
                lit = int.from_bytes(data[pos : pos + nbytes], "little")
                pos += nbytes
            lit += 1
            out += data[pos : pos + lit]
            pos += lit
            continue
        if kind == 1:
            copy_len = 4 + ((tag >> 2) & 7)
            dist = ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            copy_len = (tag >> 2) + 1
            dist = int.from_bytes(data[pos : pos + 2], "little")
            pos += 2
        else:
            copy_len = (tag >> 2) + 1
            dist = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        if dist == 0 or dist > len(out):
            raise CheckpointFormatError("corrupt snappy block in checkpoint index")
        start = len(out) - dist
        if dist >= copy_len:
            out += out[start : start + copy_len]
        else:  # overlapping copy: repeats the last `dist` bytes
            for i in range(copy_len):
                out.append(out[start + i])
    if len(out) != length:
        raise CheckpointFormatError("snappy block decompressed to the wrong length")
    return bytes(out)


def _read_block(table: bytes, offset: int, size: int, verify: bool) -> bytes:
    end = offset + size
    if end + _BLOCK_TRAILER_SIZE > len(table):
        raise CheckpointFormatError("checkpoint index block points past the end of the file")
    contents = table[offset:end]
    ctype = table[end]
    if verify:
        stored = struct.unpack_from("<I", table, end + 1)[0]
        # The block CRC covers the contents and the compression-type byte.
        if mask_crc32c(crc32c(table[offset : end + 1])) != stored:
            raise CheckpointFormatError("checkpoint index block failed its CRC check")
    if ctype == _NO_COMPRESSION:
        return contents
    if ctype == _SNAPPY_COMPRESSION:
        return snappy_decompress(contents)
    raise CheckpointFormatError(f"unknown block compression type {ctype} in checkpoint index")


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode a table block: prefix-compressed (key, value) entries + restart array.

    Each entry is ``varint shared, varint non_shared, varint value_len, key_delta,
    value``; the key is ``previous_key[:shared] + key_delta``. The trailing uint32
    array lists "restart points" where ``shared`` is 0 (for binary search); a linear
    scan does not need them beyond locating where entries stop, but we check them.
    """
    if len(block) < 4:
        raise CheckpointFormatError("checkpoint index block is too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointFormatError("corrupt restart array in checkpoint index block")
    restarts = set(struct.unpack_from(f"<{num_restarts}I", block, limit))
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < limit:
        entry_start = pos
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise CheckpointFormatError("corrupt entry in checkpoint index block")
        if entry_start in restarts and shared != 0:
            raise CheckpointFormatError("restart point with a shared key prefix in checkpoint index")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def _read_table(path: Path, verify: bool) -> list[tuple[bytes, bytes]]:
    """All (key, value) records of a LevelDB-format table file, in key order."""
    table = path.read_bytes()
    if len(table) < _FOOTER_SIZE:
        raise CheckpointFormatError(f"{path} is too short to be a checkpoint index")
    footer = table[-_FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != _TABLE_MAGIC:
        raise CheckpointFormatError(f"{path} is not a TensorFlow checkpoint index (bad magic)")
    _meta_off, pos = _varint(footer, 0)
    _meta_size, pos = _varint(footer, pos)
    index_off, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    records: list[tuple[bytes, bytes]] = []
    # The index block maps the last key of each data block to that block's handle.
    for _, handle in _block_entries(_read_block(table, index_off, index_size, verify)):
        off, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        records.extend(_block_entries(_read_block(table, off, size, verify)))
    return records


def _index_path(prefix: Path | str) -> tuple[str, Path]:
    """Resolve a checkpoint prefix to (prefix string, .index path).

    TF prefixes are plain string prefixes: musicnn's are directories with a trailing
    slash (``MSD_musicnn/`` -> ``MSD_musicnn/.index``), which ``pathlib`` would drop,
    so a directory is taken to mean "the files named ``.index`` etc. inside it".
    """
    text = os.fspath(prefix)
    if os.path.isdir(text):
        text = os.path.join(text, "")
    index = Path(text + ".index")
    if not index.is_file():
        if os.path.isfile(text):
            raise CheckpointFormatError(
                f"{text} looks like a legacy V1 TensorFlow checkpoint, which is not supported",
                hint="re-save it with TensorFlow as a V2 checkpoint (tf.train.Saver default since TF 1.2)",
            )
        raise CheckpointFormatError(f"no checkpoint index at {index}")
    return text, index


def _read_bundle(prefix: Path | str, verify: bool) -> tuple[str, int, dict[str, TensorEntry]]:
    """(prefix string, number of data shards, name -> entry) from a checkpoint's index."""
    text, index = _index_path(prefix)
    num_shards: int | None = None
    entries: dict[str, TensorEntry] = {}
    for key, value in _read_table(index, verify):
        if key == b"":  # BundleHeaderProto: num_shards (1), endianness (2), version (3)
            num_shards = 1
            for field, _, v in _proto_fields(value):
                if field == 1:
                    num_shards = int(v)  # type: ignore[arg-type]
                elif field == 2 and v != 0:
                    raise CheckpointFormatError("big-endian checkpoints are not supported")
            continue
        entries[key.decode("utf-8")] = _parse_entry(value)
    if num_shards is None:
        raise CheckpointFormatError(f"{index} has no tensor bundle header")
    return text, num_shards, entries


def list_tf_checkpoint(prefix: Path | str, verify: bool = True) -> dict[str, TensorEntry]:
    """Name -> :class:`TensorEntry` for every tensor of a V2 checkpoint (no data read)."""
    return _read_bundle(prefix, verify)[2]


def read_tf_checkpoint(
    prefix: Path | str, names: Iterable[str] | None = None, verify: bool = True
) -> dict[str, np.ndarray]:
    """Read the tensors of a TensorFlow V2 checkpoint without TensorFlow.

    ``prefix`` is the checkpoint prefix (``<prefix>.index``,
    ``<prefix>.data-00000-of-00001``) or a directory whose files are named ``.index``
    etc., as in the musicnn wheel. ``names`` restricts reading to those tensors (an
    unknown name raises). With ``verify`` the index block CRCs and each tensor's
    CRC-32C are checked. String tensors are skipped when ``names`` is None.
    """
    text, num_shards, entries = _read_bundle(prefix, verify)
    if names is None:
        wanted = [n for n, e in entries.items() if e.dtype != _DT_STRING]
    else:
        wanted = list(names)
        missing = [n for n in wanted if n not in entries]
        if missing:
            raise CheckpointFormatError(f"checkpoint {text} has no tensor(s) {', '.join(missing)}")
    out: dict[str, np.ndarray] = {}
    with contextlib.ExitStack() as stack:
        shards: dict[int, BinaryIO] = {}
        for name in wanted:
            entry = entries[name]
            if entry.sliced:
                raise CheckpointFormatError(f"tensor {name!r} is partitioned (sliced); not supported")
            dtype = _TF_DTYPES.get(entry.dtype)
            if dtype is None:
                raise CheckpointFormatError(f"tensor {name!r} has unsupported TF dtype {entry.dtype}")
            if math.prod(entry.shape) * dtype.itemsize != entry.size:
                raise CheckpointFormatError(f"tensor {name!r}: size {entry.size} does not match its shape")
            if entry.shard_id not in shards:
                data_path = f"{text}.data-{entry.shard_id:05d}-of-{num_shards:05d}"
                if not os.path.isfile(data_path):
                    raise CheckpointFormatError(f"missing checkpoint data file {data_path}")
                shards[entry.shard_id] = stack.enter_context(open(data_path, "rb"))
            fh = shards[entry.shard_id]
            fh.seek(entry.offset)
            raw = fh.read(entry.size)
            if len(raw) != entry.size:
                raise CheckpointFormatError(f"tensor {name!r} is truncated in the data file")
            if verify and entry.crc32c is not None and mask_crc32c(crc32c(raw)) != entry.crc32c:
                raise CheckpointFormatError(f"tensor {name!r} failed its CRC check")
            # astype copies out of the read-only buffer and into native byte order.
            out[name] = np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))
    return out


# --------------------------------------------------------------------------------------
# Mel front end (librosa.feature.melspectrogram as musicnn calls it)
# --------------------------------------------------------------------------------------


def _hz_to_mel_slaney(freqs: np.ndarray) -> np.ndarray:
    """librosa.hz_to_mel(htk=False): linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    mels = freqs / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(freqs >= min_log_hz, min_log_mel + np.log(np.maximum(freqs, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = FFT_SIZE, n_mels: int = N_MELS) -> np.ndarray:
    """``librosa.filters.mel(sr, n_fft, n_mels)`` defaults: Slaney mel scale and area norm.

    Returns float32 [n_mels, 1 + n_fft // 2], computed in float64 like librosa.
    """
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_edges = np.linspace(_hz_to_mel_slaney(np.array(0.0)), _hz_to_mel_slaney(np.array(sr / 2.0)), n_mels + 2)
    mel_f = _mel_to_hz_slaney(mel_edges)  # n_mels + 2 band edges in Hz
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


class LogMelFrontend(nn.Module):
    """Waveform at 16 kHz -> musicnn's log-compressed mel spectrogram [B, frames, 96].

    Mirrors ``extractor.batch_data``: ``librosa.feature.melspectrogram`` (centered
    STFT, periodic Hann window, power 2, n_fft 512, hop 256, Slaney mel), a cast to
    float16 (musicnn does it; it quantises the mel power to ~3 significant digits),
    then ``log10(10000 * x + 1)``.

    ``pad_mode`` is the centering pad: librosa >= 0.10 pads with zeros ("constant"),
    librosa 0.7-0.9 (musicnn's era) reflected ("reflect"). It only changes the first
    and last frame of a signal.
    """

    def __init__(self, pad_mode: str = "constant", float16_roundtrip: bool = True) -> None:
        super().__init__()
        self.pad_mode = pad_mode
        self.float16_roundtrip = float16_roundtrip
        self.register_buffer("window", torch.hann_window(FFT_SIZE, periodic=True), persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(mel_filterbank()), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        spec = torch.stft(
            wave.float(),
            n_fft=FFT_SIZE,
            hop_length=FFT_HOP,
            win_length=FFT_SIZE,
            window=self.window,
            center=True,
            pad_mode=self.pad_mode,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # [B, 257, frames]
        mel = torch.matmul(self.mel_fb, power).transpose(1, 2)  # [B, frames, 96]
        if self.float16_roundtrip:
            mel = mel.half().float()
        return torch.log10(10000.0 * mel + 1.0)


def musicnn_patches(logmel: torch.Tensor, hop_frames: int = N_FRAMES) -> torch.Tensor:
    """Cut a whole-signal log-mel [frames, 96] into [P, 187, 96] patches like ``batch_data``.

    Patches start every ``hop_frames`` frames (musicnn's default is no overlap) and a
    trailing remainder shorter than 187 frames is dropped, as musicnn does.
    """
    last = logmel.shape[0] - N_FRAMES + 1
    if last <= 0:
        raise ValueError(f"need at least {N_FRAMES} frames, got {logmel.shape[0]}")
    return torch.stack([logmel[t : t + N_FRAMES] for t in range(0, last, hop_frames)])


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


def _tf_same_pad(kernel: int) -> tuple[int, int]:
    """TF 'same' padding for stride 1: the extra zero of an even kernel goes *after*."""
    total = kernel - 1
    return total // 2, total - total // 2


class _FrontBlock(nn.Module):
    """conv (ReLU) -> batch norm -> max over the whole frequency axis (TF timbral/tempo_block).

    ``forward`` is the literal graph (used in training mode and as the reference in
    tests). :class:`MusiCNN` in eval mode instead takes the max over frequency of the
    *raw* convolution and applies bias, ReLU and batch norm to the pooled [B, C, T]
    map only (:meth:`signed_weight` + :meth:`finish`), which skips two passes over a
    map up to 59 x larger.
    """

    def __init__(self, out_ch: int, kernel: tuple[int, int], time_pad: tuple[int, int]) -> None:
        super().__init__()
        self.time_pad = time_pad
        self.conv = nn.Conv2d(1, out_ch, kernel)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPSILON)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 1, T, F]
        x = F.pad(x, (0, 0, *self.time_pad))
        x = self.bn(F.relu(self.conv(x)))
        return x.amax(dim=3)  # [B, C, T]

    def signed_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv weight with channels of negative BN scale negated, that sign [C]).

        Eval-mode ``bn(relu(z + b))`` is monotonic in ``z`` per channel: increasing where
        the BN scale ``gamma / sqrt(var + eps)`` is >= 0, decreasing where it is < 0
        (most trained channels). So its max over frequency is taken at ``max z`` or at
        ``min z = -max(-z)``; negating those channels' filters turns both into one max.
        """
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        sign = torch.where(scale < 0, -1.0, 1.0).to(self.conv.weight.dtype)
        return self.conv.weight * sign.view(-1, 1, 1, 1), sign

    def finish(self, pooled: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """[B, C, T] max over frequency of the signed, bias-free conv -> the block's output."""
        z = F.relu(pooled * sign.unsqueeze(1) + self.conv.bias.unsqueeze(1))
        bn = self.bn
        return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class _MidBlock(nn.Module):
    """Mid-end layer: a conv spanning all input features over 7 frames, ReLU, batch norm.

    TF builds it as a 2-D conv of kernel [7, C] over a [T, C, 1] map; that equals a 1-D
    conv over time with C input channels.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, 7, padding=3)
        self.bn = nn.BatchNorm1d(out_ch, eps=BN_EPSILON)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, T]
        return self.bn(F.relu(self.conv(x)))


class MusiCNN(nn.Module):
    """``musicnn.models.build_musicnn`` (inference mode) in PyTorch.

    Input: log-mel patches [B, T, 96] (T = 187 for the 3 s models). Output: tag
    probabilities [B, n_classes] (sigmoid) and the "penultimate" features [B, 200]
    (after the dense layer's batch norm, as musicnn's ``features['penultimate']``).
    """

    def __init__(
        self,
        num_classes: int = 50,
        num_filt_midend: int = 64,
        num_units_backend: int = 200,
        n_mels: int = N_MELS,
    ) -> None:
        super().__init__()
        timbral_filters = int(1.6 * 128)  # 204
        temporal_filters = int(1.6 * 32)  # 51
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPSILON)
        # Timbral filters: 7 frames x 40 % / 70 % of the mel axis, time-padded 3+3.
        self.timbral74 = _FrontBlock(timbral_filters, (7, int(0.4 * n_mels)), (3, 3))
        self.timbral77 = _FrontBlock(timbral_filters, (7, int(0.7 * n_mels)), (3, 3))
        # Temporal filters: 128/64/32 frames x 1 bin with TF 'same' (asymmetric) padding.
        self.temporal128 = _FrontBlock(temporal_filters, (128, 1), _tf_same_pad(128))
        self.temporal64 = _FrontBlock(temporal_filters, (64, 1), _tf_same_pad(64))
        self.temporal32 = _FrontBlock(temporal_filters, (32, 1), _tf_same_pad(32))
        front_ch = 2 * timbral_filters + 3 * temporal_filters  # 561
        self.mid1 = _MidBlock(front_ch, num_filt_midend)
        self.mid2 = _MidBlock(num_filt_midend, num_filt_midend)
        self.mid3 = _MidBlock(num_filt_midend, num_filt_midend)
        pooled = 2 * (front_ch + 3 * num_filt_midend)  # (max, mean) x 753 = 1506
        self.pool_bn = nn.BatchNorm1d(pooled, eps=BN_EPSILON)
        self.dense = nn.Linear(pooled, num_units_backend)
        self.dense_bn = nn.BatchNorm1d(num_units_backend, eps=BN_EPSILON)
        self.out = nn.Linear(num_units_backend, num_classes)
        self.logmel = LogMelFrontend()
        self.eval()

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.input_bn(patches.unsqueeze(1))  # [B, 1, T, F]
        if self.training:  # batch-statistics BN: the max-first shortcut does not apply
            front = torch.cat([blk(x) for blk in self._front_blocks()], dim=1)
        else:
            # Chunks bound the memory of the unpooled conv maps (~9 MB per window)
            # for large batches (the stage sends 64 windows).
            front = torch.cat([self._front_fast(c) for c in x.split(FRONT_CHUNK)])  # [B, 561, T]
        m1 = self.mid1(front)
        m2 = self.mid2(m1) + m1
        m3 = self.mid3(m2) + m2
        feats = torch.cat([front, m1, m2, m3], dim=1)  # [B, 753, T]
        # TF concatenates max and mean on a trailing axis and flattens [753, 2] row-major,
        # so the dense layer sees them interleaved: max_0, mean_0, max_1, mean_1, ...
        pooled = torch.stack([feats.amax(dim=2), feats.mean(dim=2)], dim=2).flatten(1)
        pooled = self.pool_bn(pooled)
        penultimate = self.dense_bn(F.relu(self.dense(pooled)))
        probs = torch.sigmoid(self.out(penultimate))
        return probs, penultimate

    def _front_blocks(self) -> tuple[_FrontBlock, ...]:
        return (self.timbral74, self.timbral77, self.temporal128, self.temporal64, self.temporal32)

    def _front_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode front end, [B, 1, T, F] -> [B, 561, T]; equals the blocks' ``forward``.

        The convolutions stay ``F.conv2d`` (oneDNN): an im2col + matmul reformulation
        measured no faster on CPU, for the timbral nor the temporal filters. What the
        literal graph wastes is two elementwise passes (ReLU, BN) over the unpooled
        [B, C, T, F'] maps; here the max over frequency comes first (see
        :meth:`_FrontBlock.signed_weight`) and those run on [B, C, T] only.
        """
        out = []
        for blk in self._front_blocks():
            weight, sign = blk.signed_weight()
            z = F.conv2d(F.pad(x, (0, 0, *blk.time_pad)), weight)  # [B, C, T, F']
            out.append(blk.finish(z.amax(dim=3), sign))
        return torch.cat(out, dim=1)

    def embed_audio(
        self, wave_16k: torch.Tensor, left_context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw 3 s windows at 16 kHz [B, 48000] -> (penultimate [B, 200], tag probs [B, 50]).

        musicnn computes one mel of the whole file and cuts 187-frame patches from it;
        frame ``i`` of a patch starting at sample ``s`` is centered on ``s + 256 * i``.
        A 3 s window's own centered mel has 1 + 48000 // 256 = 188 frames and its first
        187 line up with that patch, except frame 0, whose analysis window reaches
        ``CONTEXT_SAMPLES`` (256) samples before the window start:

        * ``left_context`` [B, 256], the audio just before each window (zeros at the
          start of a file), makes the result identical to musicnn's patch.
        * Without it frame 0 sees zero padding (librosa >= 0.10's centering). musicnn's
          librosa (<= 0.8) reflects the file at its start instead, so every window,
          the first included, needs its context (the stage passes the reflection there)
          to match; without it that one frame moved the penultimate features by up to
          ~0.4 through the max-pooling.

        Longer windows use their first 187 frames; shorter ones raise.
        """
        if wave_16k.dim() == 1:
            wave_16k = wave_16k.unsqueeze(0)
        first = 0
        if left_context is not None:
            if left_context.shape != (wave_16k.shape[0], CONTEXT_SAMPLES):
                raise ValueError(f"left_context must be [B, {CONTEXT_SAMPLES}], got {tuple(left_context.shape)}")
            wave_16k = torch.cat([left_context.to(wave_16k), wave_16k], dim=1)
            first = 1  # frame 1 of the extended signal is centered on the window start
        logmel = self.logmel(wave_16k)
        if logmel.shape[1] < first + N_FRAMES:
            raise ValueError(
                f"embed_audio needs >= {(N_FRAMES - 1) * FFT_HOP} samples per window, got {wave_16k.shape[-1]}"
            )
        probs, penultimate = self(logmel[:, first : first + N_FRAMES])
        return penultimate, probs


# --------------------------------------------------------------------------------------
# Conversion TF checkpoint -> safetensors
# --------------------------------------------------------------------------------------


def _bn_names(tf_scope: str, torch_prefix: str) -> dict[str, str]:
    return {
        f"{tf_scope}/gamma": f"{torch_prefix}.weight",
        f"{tf_scope}/beta": f"{torch_prefix}.bias",
        f"{tf_scope}/moving_mean": f"{torch_prefix}.running_mean",
        f"{tf_scope}/moving_variance": f"{torch_prefix}.running_var",
    }


def _tf_to_torch_names() -> dict[str, str]:
    """TF variable name -> torch parameter name.

    ``tf.compat.v1.layers`` numbers layers in creation order: in ``build_musicnn`` that
    is input BN, then (conv, BN) for f74, f77, s1 (128), s2 (64), s3 (32), the three
    mid-end layers, the pooled-features BN, dense, its BN, and the output dense.
    """
    names: dict[str, str] = {}
    names.update(_bn_names("batch_normalization", "input_bn"))
    blocks = ["timbral74", "timbral77", "temporal128", "temporal64", "temporal32", "mid1", "mid2", "mid3"]
    for i, block in enumerate(blocks):
        conv = "conv2d" if i == 0 else f"conv2d_{i}"
        names[f"{conv}/kernel"] = f"{block}.conv.weight"
        names[f"{conv}/bias"] = f"{block}.conv.bias"
        names.update(_bn_names(f"batch_normalization_{i + 1}", f"{block}.bn"))
    names.update(_bn_names("batch_normalization_9", "pool_bn"))
    names["dense/kernel"] = "dense.weight"
    names["dense/bias"] = "dense.bias"
    names.update(_bn_names("batch_normalization_10", "dense_bn"))
    names["dense_1/kernel"] = "out.weight"
    names["dense_1/bias"] = "out.bias"
    return names


def _to_torch_layout(torch_name: str, value: np.ndarray) -> np.ndarray:
    """Re-lay a TF weight for torch: HWIO conv -> OIHW (or O,C,K for mid-end), [in,out] dense -> [out,in]."""
    if torch_name.endswith("conv.weight"):
        if torch_name.startswith("mid"):  # TF [7, C, 1, O] -> Conv1d [O, C, 7]
            return value[:, :, 0, :].transpose(2, 1, 0)
        return value.transpose(3, 2, 0, 1)  # [kh, kw, 1, O] -> [O, 1, kh, kw]
    if torch_name in ("dense.weight", "out.weight"):
        return value.T
    return value


def musicnn_checkpoint_prefix(model_name: str) -> Path:
    """Directory holding ``model_name``'s checkpoint inside the installed ``musicnn`` package.

    Uses ``find_spec`` so that nothing of musicnn (whose modules import TensorFlow)
    is executed.
    """
    _check_model_name(model_name)
    try:
        spec = importlib.util.find_spec("musicnn")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MtxError("the musicnn package (which ships the MusiCNN weights) is not installed", hint=INSTALL_HINT)
    for location in spec.submodule_search_locations:
        ckpt = Path(location) / model_name
        if (ckpt / ".index").is_file():
            return ckpt
    raise MtxError(f"the installed musicnn package has no {model_name} checkpoint", hint=INSTALL_HINT)


def convert_checkpoint(model_name: str = "MSD_musicnn", out_path: Path | None = None) -> Path:
    """Convert musicnn's TF checkpoint to a :class:`MusiCNN` safetensors file.

    ``out_path`` defaults to ``./<model_name>.safetensors``. The file is written to a
    temporary name in the same directory and moved into place with ``os.replace``, so
    a reader never sees a partial file.
    """
    from safetensors.numpy import save_file

    prefix = musicnn_checkpoint_prefix(model_name)
    out_path = Path(out_path) if out_path is not None else Path(f"{model_name}.safetensors")
    mapping = _tf_to_torch_names()
    tf_tensors = read_tf_checkpoint(prefix, names=mapping)
    state = {
        mapping[k]: np.ascontiguousarray(_to_torch_layout(mapping[k], v), dtype=np.float32)
        for k, v in tf_tensors.items()
    }
    # Sanity-check shapes against the module before writing anything.
    reference = MusiCNN(num_classes=len(tag_names(model_name))).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items() if not k.endswith("num_batches_tracked")}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise CheckpointFormatError(f"{model_name} checkpoint does not match the MusiCNN architecture")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"model_name": model_name, "source": "musicnn 0.1.0 TF checkpoint"})
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("converted %s checkpoint to %s", model_name, out_path)
    return out_path


def load_musicnn(model_name: str = "MSD_musicnn", cache_dir: Path | None = None) -> MusiCNN:
    """A ready (eval-mode) :class:`MusiCNN`, converting into ``<cache_dir>/<model>.safetensors`` once."""
    from safetensors.torch import load_file

    _check_model_name(model_name)
    cache_dir = Path(cache_dir) if cache_dir is not None else Path.cwd()
    path = cache_dir / f"{model_name}.safetensors"
    if not path.is_file():
        convert_checkpoint(model_name, path)
    model = MusiCNN(num_classes=len(tag_names(model_name)))
    # strict=False only to tolerate the BN num_batches_tracked counters, which are not
    # stored (unused in eval mode); every real tensor must be present.
    result = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise MtxError(f"cached MusiCNN weights {path} do not match the model", hint=f"delete {path} to reconvert")
    return model.eval()
