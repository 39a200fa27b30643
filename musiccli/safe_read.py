"""The one way to open a file that mtx wrote earlier: a damaged file is one line naming it.

A file in the state dir can be truncated (a full disk, a copy that stopped), overwritten with
garbage, or re-encoded. The libraries that read them say so in their own words (``SafetensorError:
incomplete metadata``, ``ValueError: mmap length is greater than file size``, onnxruntime's
``INVALID_PROTOBUF``, tokenizers' ``expected value at line 1``), which the CLI would otherwise show
as an internal error. Each reader here turns a decode error into :class:`~musiccli.state.DamagedFileError`
(an ``MtxError``) that names the file and says what to do; a missing file stays "file not found".

``hint`` is what to do about that particular file: rerun the stage that wrote it with ``--force``
(the default), delete a cache so that it is rebuilt, or re-export a run.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from .errors import MtxError
from .state import DAMAGED_HINT, DamagedFileError, read_json

__all__ = ["DamagedFileError", "read_json", "load_safetensors", "load_npy", "onnx_session", "load_tokenizer",
           "open_h5", "first_line"]


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:160] if text else type(e).__name__).rstrip(".")


def _missing(path: Path) -> MtxError:
    return MtxError(f"file not found: {path}", hint="check the path or run the stage that writes it")


def _reraise_os(e: OSError, path: Path) -> None:
    """A missing file or a machine error (full disk, permissions) is not damage: raise those as they are."""
    if e.errno == errno.ENOENT:
        raise _missing(path) from None
    if e.errno is not None:
        raise e


def load_safetensors(path: Path, framework: str = "torch", device: str = "cpu", hint: str | None = None
                     ) -> dict[str, Any]:
    """``safetensors.<framework>.load_file``; a truncated or foreign file is a :class:`DamagedFileError`."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        if framework == "numpy":
            from safetensors.numpy import load_file

            return load_file(str(path))
        from safetensors.torch import load_file as load_torch

        return load_torch(str(path), device=device)
    except OSError as e:
        _reraise_os(e, path)
        raise DamagedFileError(path, f"not a safetensors file ({first_line(e)})", hint) from None
    except Exception as e:  # noqa: BLE001 - SafetensorError, or ValueError/RuntimeError on bad headers
        if type(e).__name__ not in ("SafetensorError", "ValueError", "RuntimeError", "JSONDecodeError",
                                    "UnicodeDecodeError"):
            raise
        raise DamagedFileError(path, f"not a complete safetensors file ({first_line(e)})", hint) from None


def load_npy(path: Path, mmap_mode: str | None = None, hint: str | None = None) -> Any:
    """``numpy.load`` of an ``.npy`` array (never pickles); truncated or garbage: a :class:`DamagedFileError`."""
    import numpy as np

    path = Path(path)
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as e:
        _reraise_os(e, path)
        raise DamagedFileError(path, f"not a NumPy array file ({first_line(e)})", hint) from None
    except (ValueError, EOFError) as e:
        raise DamagedFileError(path, f"truncated or not a NumPy array file ({first_line(e)})", hint) from None
    if not isinstance(arr, np.ndarray):   # an .npz archive where an array was expected
        raise DamagedFileError(path, "not a single NumPy array", hint)
    return arr


def onnx_session(path: Path, hint: str | None = None, **kwargs: Any) -> Any:
    """``onnxruntime.InferenceSession(path, **kwargs)``; a truncated model is a :class:`DamagedFileError`."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        return ort.InferenceSession(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        kind = type(e).__name__
        if kind in ("InvalidProtobuf", "Fail", "InvalidGraph", "NoSuchFile", "RuntimeException") \
                or "protobuf" in str(e).lower() or "Load model" in str(e):
            raise DamagedFileError(path, f"not a loadable ONNX model ({first_line(e)})",
                                   hint or "export it again with `mtx export --force`") from None
        raise


def load_tokenizer(path: Path, hint: str | None = None) -> Any:
    """``tokenizers.Tokenizer.from_file``; garbage or a truncated file is a :class:`DamagedFileError`."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot parse
        raise DamagedFileError(path, f"not a tokenizer file ({first_line(e)})", hint) from None


def open_h5(path: Path, mode: str = "r", hint: str | None = None, **kwargs: Any) -> Any:
    """``h5py.File(path, mode)``; a truncated or foreign file is a :class:`DamagedFileError`."""
    import h5py

    path = Path(path)
    try:
        return h5py.File(path, mode, **kwargs)
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as e:
        text = str(e)
        if any(s in text for s in ("truncated file", "file signature not found", "bad object header",
                                   "bad symbol table", "addr overflow",
                                   "bad superblock", "wrong B-tree signature")) \
                and "No such file" not in text and "errno = 28" not in text:
            raise DamagedFileError(path, f"not a complete HDF5 file ({first_line(e)})", hint) from None
        raise


DEFAULT_HINT = DAMAGED_HINT


def onnx_file_loads(path: Path) -> bool:
    """Whether onnxruntime can load ``path`` (a cached export that is damaged is rebuilt, not used)."""
    try:
        onnx_session(path, providers=["CPUExecutionProvider"])
    except DamagedFileError:
        return False
    return True
