"""Per-encoder default recipes (``--recipe``): the Navidrome design's backbone and batch size per encoder.

A recipe only fills what the user left unset: every value can still be overridden by
its own flag or config key.
"""

from __future__ import annotations

from typing import Any

from ..errors import MtxError, unknown_choice

# Used when neither a flag nor a recipe sets the value.
BUILTIN = {"text_backbone": "minilm", "batch_size": 64, "text_pooling": "mean"}

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "navidrome": {
        "muq": {"text_backbone": "minilm", "batch_size": 256},
        # MERT's 76,800-d stats: all 12 roberta-base layers pooled (12 x 768 = 9216) before the head
        "mert": {"text_backbone": "roberta", "text_pooling": "layers", "batch_size": 64},
        "music2latent": {"text_backbone": "distilbert", "batch_size": 256},
    },
}


def recipe_values(recipe: str | None, audio_encoder: str) -> dict[str, Any]:
    """The recipe's values for ``audio_encoder`` (empty without a recipe)."""
    if recipe is None:
        return {}
    if recipe not in RECIPES:
        raise unknown_choice("recipe", recipe, RECIPES)
    per_encoder = RECIPES[recipe]
    if audio_encoder not in per_encoder:
        raise MtxError(f"recipe {recipe} has no settings for audio encoder {audio_encoder!r}",
                       hint=f"it covers {', '.join(per_encoder)}; drop --recipe or pass the values yourself")
    return dict(per_encoder[audio_encoder])


def resolve(values: dict[str, Any], recipe: str | None, audio_encoder: str) -> dict[str, Any]:
    """Fill the unset (None) keys of ``values`` from the recipe, then from the built-in defaults."""
    chosen = recipe_values(recipe, audio_encoder)
    out = dict(values)
    for key, default in BUILTIN.items():
        if out.get(key) is None:
            out[key] = chosen.get(key, default)
    return out
