"""mtx: train text-to-music retrieval models and search music with text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .encoders.text import TextEmbedder
    from .families.towers.model import load_towers


def __getattr__(name: str) -> Any:
    # Lazy so that `import musiccli` (and `mtx --help`) does not import torch/transformers.
    if name == "TextEmbedder":
        from .encoders.text import TextEmbedder

        return TextEmbedder
    if name == "load_towers":   # both towers of an align or joint checkpoint, or of an export's hf/
        from .families.towers.model import load_towers

        return load_towers
    raise AttributeError(name)


__all__ = ["TextEmbedder", "__version__", "load_towers"]
