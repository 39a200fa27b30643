"""Loading third-party models from the Hub or a local directory: the helpers every encoder shares.

Encoders (audio and text towers) load weights through ``transformers`` or a model's own
package. What they must agree on lives here: how a load failure reads (one line, a hint
that names ``--model``), how a loader's stdout chatter is kept out of ``--json`` output,
and how ``--layers`` selects hidden states.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

from .errors import MtxError


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or explain how to install it (``extras.require_extra``)."""
    from .extras import require_extra

    return require_extra(module, extra, f"the {extra!r} encoder")


def load_error(what: str, model: str, e: Exception) -> MtxError:
    """One readable line for a model that cannot be loaded (offline, typo, missing remote code)."""
    if "trust_remote_code" in str(e):
        return MtxError(f"{model} runs code from its own repository, which is not allowed by default",
                        hint="pass --trust-remote-code to allow it (it executes that Python code on this "
                             "machine: only for model repos you trust, e.g. the official m-a-p/MERT-v1-*)")
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return MtxError(f"cannot load {what} {model!r}: {first}",
                    hint="pass --model with a local directory saved by save_pretrained, "
                         "or a Hub id reachable from this machine")


@contextlib.contextmanager
def stdout_to_log(logger: logging.Logger) -> Iterator[None]:
    """Third-party loaders print progress to stdout, which would corrupt ``--json`` output; log it instead."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                logger.debug("%s", line.strip())


@contextlib.contextmanager
def half_checkpoint() -> Iterator[None]:
    """Loading one tower of a two-tower checkpoint (CLAP's text half): transformers warns about every
    key of the other tower as "UNEXPECTED" (a LOAD REPORT table). That is the expected case here, so
    its warnings are silenced for the load; real failures still raise."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def resolve_layers(layers: list[int] | None, n_states: int) -> list[int]:
    """Validate ``--layers`` against the model's number of hidden states (negative = from the end)."""
    if not layers:
        return list(range(n_states))
    out = []
    for layer in layers:
        idx = layer + n_states if layer < 0 else layer
        if not 0 <= idx < n_states:
            raise MtxError(f"layer {layer} out of range: this model has hidden states 0..{n_states - 1}",
                           hint=f"pass --layers with values between 0 and {n_states - 1}")
        out.append(idx)
    return out
