"""ONNX building blocks shared by every model family: one export call, one parity rule, one folder swap.

Every ONNX file ``mtx`` writes goes through :func:`export_graph` (a traced, eval-mode export with
dynamic axes) and is compared with PyTorch through :func:`check_parity` against the one tolerance,
:data:`ONNX_TOLERANCE` (the architecture's 1e-4). A finished folder is moved into place with
:func:`replace_dir`, so a present folder is always complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import MtxError
from .state import TMP_PREFIX

ONNX_TOLERANCE = 1e-4


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place (the old one, if any, is removed first)."""
    if final.exists():
        old = final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def tmp_dir(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}.", dir=parent))


def export_graph(module: Any, example: tuple[Any, ...], path: Path, inputs: Sequence[str], outputs: Sequence[str],
                 dynamic: dict[str, dict[int, str]], opset: int) -> None:
    """``module`` (put in eval mode) traced on ``example`` and written to ``path``."""
    import torch

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tracer notices: every graph is checked numerically afterwards
        torch.onnx.export(module.eval(), example, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)


def check_parity(diff: float, what: str, hint: str = "try another --opset") -> float:
    """Refuse an ONNX graph whose outputs differ from PyTorch's by more than :data:`ONNX_TOLERANCE`."""
    if not diff <= ONNX_TOLERANCE:
        raise MtxError(f"{what} differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE:g})", hint=hint)
    return diff
