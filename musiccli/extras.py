"""Optional extras: the one way core code imports a package that only an extra installs.

Every optional import goes through :func:`require_extra`, so a missing package always reads
the same way, one line that names the feature and the extra to install::

    mtx download audiomuse needs the 'psycopg' package, which is not installed
    hint: pip install 'musiccli[audiomuse]'

Without this, an ``ImportError`` inside a stage looks like a broken library (a systemic
failure) and gets the generic "a library cannot load or the device ran out of memory" hint.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MtxError

# import name -> the extra of pyproject.toml that installs it
EXTRAS: dict[str, str] = {
    "psycopg": "audiomuse",
    "pymilvus": "milvus",
    "milvus_lite": "milvus",
    "faiss": "ann",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "muq": "muq",
    "music2latent": "music2latent",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "mkdocs": "docs",          # the documentation site (mkdocs build --strict in tests/test_docs.py)
}


def install_hint(extra: str) -> str:
    return f"pip install 'musiccli[{extra}]'"


class MissingExtra(MtxError):
    """An optional package is not installed (or cannot be imported); names the extra."""

    def __init__(self, module: str, extra: str, feature: str, detail: str | None = None,
                 alternative: str | None = None) -> None:
        why = "which is not installed" if not detail else f"which cannot be imported ({detail})"
        hint = install_hint(extra) + (f", or {alternative}" if alternative else "")
        super().__init__(f"{feature} needs the {module!r} package, {why}", hint=hint)
        self.module, self.extra = module, extra


def _extra_of(module: str, extra: str | None) -> str:
    return extra or EXTRAS.get(module.split(".")[0]) or module.split(".")[0]


def require_extra(module: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """``import module`` or raise :class:`MissingExtra` naming ``pip install 'musiccli[extra]'``."""
    extra = _extra_of(module, extra)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing = getattr(e, "name", None)
        # The package itself is absent, or one of its own dependencies failed to import.
        detail = None if missing in (None, top, module) or sys_modules_blocked(top) else f"{missing} is missing"
        raise MissingExtra(top, extra, feature or f"this feature ({extra})", detail) from None


def sys_modules_blocked(module: str) -> bool:
    import sys

    return module in sys.modules and sys.modules[module] is None


def has_extra(*modules: str) -> bool:
    """Whether every module is importable (without importing it)."""
    for m in modules:
        if sys_modules_blocked(m.split(".")[0]):
            return False
        try:
            if importlib.util.find_spec(m) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def check_extra(modules: tuple[str, ...] | list[str], extra: str | None = None, feature: str | None = None,
                alternative: str | None = None) -> None:
    """Refuse early (before any work) when one of ``modules`` is missing."""
    for m in modules:
        if not has_extra(m):
            raise MissingExtra(m.split(".")[0], _extra_of(m, extra), feature or f"this feature ({extra})",
                               alternative=alternative)


__all__ = ["EXTRAS", "MissingExtra", "check_extra", "has_extra", "install_hint", "require_extra"]
