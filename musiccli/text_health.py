"""Text-tower health check: refuse a text tower that maps every prompt to (nearly) the same vector.

A contrastive text tower whose projection collapsed still returns unit vectors, so nothing
fails; search just returns the same ranking for every query. Two public measurements of
``laion/larger_clap_music`` found exactly that:

- the MTEB issue "laion/larger_clap_music returns near-constant text embeddings"
  (embeddings-benchmark/mteb #5069): mean pairwise text-text cosine **0.9993** over unrelated
  strings, against **0.180** for ``laion/clap-htsat-unfused`` and **0.294** for
  ``laion/larger_clap_general``;
- plyr.fm PR #854: that checkpoint's text-projection biases are all zero and its weights have
  std 0.006; "jazz standard" vs "heavy metal" scores cosine 0.999.

:func:`check_text_tower` embeds :data:`PROMPTS` (unrelated music descriptions), takes the
mean cosine over all distinct pairs, and refuses above :data:`THRESHOLD`. 0.99 sits far above
what working towers score (0.18-0.29 above; the tiny random towers of the tests score
0.3-0.7) and below the collapsed checkpoint's 0.9993, so it never refuses a tower that can
rank, and a user who knows better passes ``--allow-degenerate-text``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from .errors import MtxError

log = logging.getLogger(__name__)

#: Mean pairwise cosine above which a text tower is refused (see the module docstring).
THRESHOLD = 0.99
#: Unrelated music prompts: genre, instrumentation, mood and tempo all differ between them.
PROMPTS: tuple[str, ...] = (
    "a jazz standard with brushed drums and upright bass",
    "heavy metal with distorted guitars and double kick drums",
    "a solo classical piano sonata, slow and quiet",
    "upbeat electronic dance music with a four on the floor beat",
    "a country ballad with acoustic guitar and a male singer",
    "ambient drone with no rhythm",
    "a hip hop beat with rap vocals",
    "a string quartet playing a baroque piece",
    "reggae with offbeat guitar chords",
    "a children's choir singing a hymn",
    "punk rock, fast and loud",
    "lo-fi chill beats for studying",
)
ALLOW_FLAG = "--allow-degenerate-text"


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over all distinct pairs of rows (rows are normalised here)."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or len(v) < 2:
        raise ValueError("need at least two vectors")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    n = len(v)
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def text_tower_health(encode: Callable[[Sequence[str]], np.ndarray]) -> float:
    """The mean pairwise cosine of ``encode(PROMPTS)`` (lower is healthier; ~1.0 is collapsed)."""
    return mean_pairwise_cosine(np.asarray(encode(list(PROMPTS))))


def check_text_tower(encode: Callable[[Sequence[str]], np.ndarray], name: str, allow: bool = False,
                     threshold: float = THRESHOLD) -> float:
    """Measure a text tower and refuse it when collapsed; returns the figure.

    ``encode`` maps a list of texts to [N, D] vectors; ``name`` (the checkpoint or run) goes into
    the message. With ``allow`` a collapsed tower is only logged.
    """
    figure = text_tower_health(encode)
    if figure > threshold:
        if allow:
            log.warning("text tower %s looks collapsed (mean pairwise cosine %.4f > %.2f); used anyway",
                        name, figure, threshold)
            return figure
        raise MtxError(
            f"the text tower of {name} is degenerate: unrelated prompts have mean pairwise cosine {figure:.4f} "
            f"(> {threshold}), so every query would rank the library the same way",
            hint=f"use a checkpoint whose text tower works (clap: laion/clap-htsat-unfused), "
                 f"or pass {ALLOW_FLAG} to use it anyway")
    log.info("text tower %s: mean pairwise cosine %.4f over %d prompts", name, figure, len(PROMPTS))
    return figure


__all__ = ["ALLOW_FLAG", "PROMPTS", "THRESHOLD", "check_text_tower", "mean_pairwise_cosine", "text_tower_health"]
