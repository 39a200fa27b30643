"""Embed one audio file exactly as `mtx embed` embedded a store: same encoder, windows and aggregation.

Used by ``mtx search --like FILE``: the store's attributes say which encoder (and checkpoint),
window, hop, window cap and aggregation produced its rows, so a query file lands in the same space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MtxError


def embed_file(path: Path, attrs: dict[str, Any], device: str = "cpu", batch_size: int = 16) -> np.ndarray:
    """The store-space vector [dim] of one file, given the store's attributes."""
    import torch

    from ..audio import decode, frame_with_context
    from ..runtime import select_runtime
    from . import EncoderOptions, aggregate, build_encoder, get_spec

    name = str(attrs.get("encoder") or "")
    if not name:
        raise MtxError("the library's embedding store does not name its encoder",
                       hint="re-embed it with `mtx embed`")
    spec = get_spec(name)
    layers = [int(v) for v in str(attrs.get("layers") or "").split(",") if v.strip()]
    runtime = select_runtime(device, "fp32")
    encoder = build_encoder(name, EncoderOptions(model=attrs.get("model_id") or None, layers=layers or None),
                            runtime)
    sr = int(attrs.get("sample_rate") or spec.sample_rate)
    window = int(round(float(attrs.get("window") or spec.window_s) * sr))
    hop = int(round(float(attrs.get("hop") or spec.hop_s) * sr))
    wave, _ = decode(path, sr, resampler=spec.resampler)
    # The stage's own framing: context, patch grid and tail policy as the encoder declares them.
    frames = frame_with_context(wave, window, hop, int(attrs.get("max_windows") or 0) or None,
                                encoder.context_samples, encoder.patch_samples, spec.tail, spec.edge_pad)
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(runtime.device)
    outs = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            outs.append(encoder.embed_windows(x[s:s + batch_size]).float().cpu().numpy())
    vec = aggregate(np.concatenate(outs), str(attrs.get("aggregation") or spec.default_aggregation))
    dim = int(attrs.get("dim") or vec.shape[0])
    if vec.shape[0] != dim:
        raise MtxError(f"{path.name} embeds to {vec.shape[0]} dims, the store holds {dim}",
                       hint="the store was embedded with other encoder options; re-embed it or use a track id")
    return vec
