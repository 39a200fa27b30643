"""Training losses, found through the ``LOSSES`` registry.

Every loss is an ``nn.Module`` whose ``forward(text_z, audio_z, **kw)`` returns
``(loss, parts)``: a scalar tensor and a dict of floats for logging. ``text_z`` are the
text model's predictions and ``audio_z`` the targets, both in the *standardised*
audio space (see ``TextEmbedder``). Contrastive losses normalise them; regression
losses do not.

With DDP, InfoNCE gathers the other ranks' vectors *with gradient*
(``torch.distributed.nn.functional.all_gather``) so that every rank sees the global
batch as negatives, as open_clip does.

InfoNCE takes ``keys`` [B, 2] (caption-text key, recording-group key; see
``PairDataset.pair_keys``): in-batch items that share the caption text or the recording
with a pair are not its negatives and are masked out of its softmax.

The learnable temperature is clamped to [0, log 100] in log-scale *after* each optimizer
step (``clamp_temperatures``, as open_clip does), not inside the forward pass, where a
clamp would zero its gradient at the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MtxError, unknown_choice

# The temperature stays within [1/100, 1] (open_clip's clamp on log(1/T)): sharper logits destabilise
# training, and a temperature above 1 has no use.
MIN_LOGIT_SCALE = 0.0
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class LossConfig:
    temperature: float = 0.07
    learn_temperature: bool = False
    mse_weight: float = 0.1
    margin: float = 0.2            # triplet
    distill_metric: str = "mse"    # distillation: mse | cosine
    distill_kl_weight: float = 1.0  # distillation: weight of the in-batch similarity KL (0 = off)


_LOCAL_ONLY = False


@contextmanager
def local_only() -> Iterator[None]:
    """Compute losses on this rank's batch only (validation, where every rank sees the same items)."""
    global _LOCAL_ONLY
    previous, _LOCAL_ONLY = _LOCAL_ONLY, True
    try:
        yield
    finally:
        _LOCAL_ONLY = previous


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if not _LOCAL_ONLY and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks; gradients flow back to each rank's own slice."""
    _, world = _dist_info()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_plain(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks without gradient (integer keys)."""
    _, world = _dist_info()
    if world == 1:
        return x
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class Temperature(nn.Module):
    """exp(logit_scale) = 1/T; log-parameterised so it stays positive.

    The value is kept in [MIN_LOGIT_SCALE, MAX_LOGIT_SCALE] by ``clamp_`` (at construction, and
    after every optimizer step for a learnable one), never inside ``scale()``."""

    def __init__(self, temperature: float, learnable: bool) -> None:
        super().__init__()
        if temperature <= 0:
            raise MtxError(f"temperature must be positive, got {temperature}")
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)
        self.clamp_()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.logit_scale.clamp_(MIN_LOGIT_SCALE, MAX_LOGIT_SCALE)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp()


def clamp_temperatures(module: nn.Module) -> None:
    """Clamp every temperature of a loss into range; call after each optimizer step."""
    for m in module.modules():
        if isinstance(m, Temperature):
            m.clamp_()


def same_item_mask(keys: torch.Tensor, all_keys: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """[B, G] True where a local pair and a gathered pair share the caption text or the recording,
    except each pair's own positive (``positives[i]`` = its column)."""
    same = (keys[:, None, 0] == all_keys[None, :, 0]) | (keys[:, None, 1] == all_keys[None, :, 1])
    same[torch.arange(keys.shape[0], device=keys.device), positives] = False
    return same


class InfoNCELoss(nn.Module):
    """Bidirectional CLIP loss over L2-normalised vectors."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.temp = Temperature(cfg.temperature, cfg.learn_temperature)

    def forward(self, text_z: torch.Tensor, audio_z: torch.Tensor, keys: torch.Tensor | None = None,
                **kw) -> tuple[torch.Tensor, dict[str, float]]:
        t = F.normalize(text_z.float(), dim=-1)
        a = F.normalize(audio_z.float(), dim=-1)
        rank, _ = _dist_info()
        all_t, all_a = gather_with_grad(t), gather_with_grad(a)
        scale = self.temp.scale()
        # Local rows against the global batch; this rank's positives sit at offset rank * B.
        labels = torch.arange(t.shape[0], device=t.device) + rank * t.shape[0]
        logits_t2a, logits_a2t = scale * t @ all_a.T, scale * a @ all_t.T
        if keys is not None:
            # Same caption or same recording: not a negative, in either direction (the relation is symmetric).
            same = same_item_mask(keys, gather_plain(keys), labels)
            logits_t2a = logits_t2a.masked_fill(same, float("-inf"))
            logits_a2t = logits_a2t.masked_fill(same, float("-inf"))
        t2a = F.cross_entropy(logits_t2a, labels)
        a2t = F.cross_entropy(logits_a2t, labels)
        loss = (t2a + a2t) / 2
        return loss, {"infonce": float(loss.detach()), "temperature": float(1.0 / scale.detach())}


class MSELoss(nn.Module):
    """Regression onto the standardised audio vectors (not normalised: magnitudes matter)."""

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()

    def forward(self, text_z: torch.Tensor, audio_z: torch.Tensor, **kw) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.mse_loss(text_z.float(), audio_z.float())
        return loss, {"mse": float(loss.detach())}


class CombinedLoss(nn.Module):
    """InfoNCE for ranking plus a small MSE term that keeps predictions in the audio space."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.infonce = InfoNCELoss(cfg)
        self.mse = MSELoss(cfg)
        self.mse_weight = cfg.mse_weight

    def forward(self, text_z: torch.Tensor, audio_z: torch.Tensor, **kw) -> tuple[torch.Tensor, dict[str, float]]:
        l1, p1 = self.infonce(text_z, audio_z, keys=kw.get("keys"))
        l2, p2 = self.mse(text_z, audio_z)
        return l1 + self.mse_weight * l2, {**p1, **p2}


class TripletLoss(nn.Module):
    """Cosine triplet loss with the hardest in-batch negative, in both directions."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.margin = cfg.margin

    def forward(self, text_z: torch.Tensor, audio_z: torch.Tensor, **kw) -> tuple[torch.Tensor, dict[str, float]]:
        sim = F.normalize(text_z.float(), dim=-1) @ F.normalize(audio_z.float(), dim=-1).T
        if sim.shape[0] < 2:  # no negatives in a batch of one
            return sim.sum() * 0.0, {"triplet": 0.0}
        pos = sim.diagonal()
        eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
        masked = sim.masked_fill(eye, float("-inf"))
        t2a = F.relu(self.margin - pos + masked.max(dim=1).values)
        a2t = F.relu(self.margin - pos + masked.max(dim=0).values)
        loss = (t2a.mean() + a2t.mean()) / 2
        return loss, {"triplet": float(loss.detach())}


def listmle(scores: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ListMLE: -log P(order | scores) under the Plackett-Luce model, averaged over rows.

    ``order[i]`` lists column indices best first. P = prod_k exp(s_k) / sum_{m>=k} exp(s_m).
    """
    s = scores.gather(1, order)
    # logsumexp over each suffix s[k:], computed as a reversed cumulative logsumexp.
    suffix_lse = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
    return (suffix_lse - s).sum(-1).mean()


class ListMLELoss(nn.Module):
    """Listwise ranking: each text should rank the batch's audio like its own audio does.

    The ground-truth permutation for text ``i`` sorts the batch by cosine similarity
    to audio ``i`` (so audio ``i`` itself comes first); ListMLE is applied to the
    temperature-scaled text-audio cosine scores.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.temp = Temperature(cfg.temperature, cfg.learn_temperature)

    def forward(self, text_z: torch.Tensor, audio_z: torch.Tensor, **kw) -> tuple[torch.Tensor, dict[str, float]]:
        t = F.normalize(text_z.float(), dim=-1)
        a = F.normalize(audio_z.float(), dim=-1)
        with torch.no_grad():
            aa = a @ a.T
            # Force the paired audio to the top even if a duplicate vector ties with it.
            aa.fill_diagonal_(float("inf"))
            order = aa.argsort(dim=1, descending=True, stable=True)
        # / B: the Plackett-Luce log-likelihood sums over B positions; keep the scale batch-size free
        loss = listmle(self.temp.scale() * t @ a.T, order) / t.shape[0]
        return loss, {"listmle": float(loss.detach())}


class DistillationLoss(nn.Module):
    """Student text vectors vs a teacher's text vectors for the same captions.

    Pointwise: MSE (or 1 - cosine) between student and teacher predictions; plus an
    optional KL between the teacher's and the student's softmax similarity
    distributions over the batch's audio (or over the teacher's vectors when no audio
    is given), which transfers how the teacher *ranks*, not only where it points.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        if cfg.distill_metric not in ("mse", "cosine"):
            raise unknown_choice("distillation metric", cfg.distill_metric, ["mse", "cosine"])
        self.metric = cfg.distill_metric
        self.kl_weight = cfg.distill_kl_weight
        # Fixed even with --learn-temperature: the KL compares two distributions at one agreed sharpness,
        # and learning it would let the loss shrink by flattening both instead of matching them.
        self.temp = Temperature(cfg.temperature, learnable=False)

    def forward(self, text_z: torch.Tensor, audio_z: torch.Tensor | None = None,
                teacher_z: torch.Tensor | None = None, **kw) -> tuple[torch.Tensor, dict[str, float]]:
        if teacher_z is None:
            raise MtxError("the distillation loss needs teacher vectors", hint="pass --teacher RUN")
        s, t = text_z.float(), teacher_z.float().detach()
        if self.metric == "mse":
            point = F.mse_loss(s, t)
        else:
            point = (1 - F.cosine_similarity(s, t, dim=-1)).mean()
        parts = {f"distill_{self.metric}": float(point.detach())}
        loss = point
        if self.kl_weight > 0:
            ref = F.normalize(audio_z.float() if audio_z is not None else t, dim=-1)
            scale = self.temp.scale()
            log_p_student = F.log_softmax(scale * F.normalize(s, dim=-1) @ ref.T, dim=-1)
            log_p_teacher = F.log_softmax(scale * F.normalize(t, dim=-1) @ ref.T, dim=-1)
            kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
            loss = loss + self.kl_weight * kl
            parts["distill_kl"] = float(kl.detach())
        return loss, parts


LOSSES: dict[str, Callable[[LossConfig], nn.Module]] = {
    "infonce": InfoNCELoss,
    "mse": MSELoss,
    "combined": CombinedLoss,
    "triplet": TripletLoss,
    "listmle": ListMLELoss,
    "distillation": DistillationLoss,
}
DEFAULT_LOSS = "combined"


class WeightedSum(nn.Module):
    """A combination such as ``infonce+0.5*listmle``: the weighted sum of registered losses."""

    def __init__(self, terms: list[tuple[float, str]], cfg: LossConfig) -> None:
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.names = [n for _, n in terms]
        self.terms = nn.ModuleList(LOSSES[n](cfg) for n in self.names)

    def forward(self, text_z: torch.Tensor, audio_z: torch.Tensor, **kw) -> tuple[torch.Tensor, dict[str, float]]:
        values: list[torch.Tensor] = []
        parts: dict[str, float] = {}
        for w, loss_fn in zip(self.weights, self.terms):
            value, p = loss_fn(text_z, audio_z, **kw)
            parts.update(p)
            values.append(w * value)
        return torch.stack(values).sum(), parts


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """``"infonce+0.5*listmle"`` -> ``[(1.0, "infonce"), (0.5, "listmle")]``; names checked against LOSSES."""
    terms = []
    for raw in spec.split("+"):
        part = raw.strip()
        weight = 1.0
        if "*" in part:
            w, _, part = part.partition("*")
            try:
                weight = float(w)
            except ValueError:
                raise MtxError(f"bad loss weight {w!r} in {spec!r}", hint="write e.g. infonce+0.5*listmle") from None
            if not (math.isfinite(weight) and weight > 0):
                raise MtxError(f"bad loss weight {w.strip()!r} in {spec!r}: each weight must be a finite number "
                               f"above 0", hint="write e.g. infonce+0.5*listmle, or leave a loss out")
            part = part.strip()
        if part not in LOSSES:
            raise unknown_choice("loss", part, LOSSES)
        terms.append((weight, part))
    return terms


def loss_names(spec: str) -> list[str]:
    return [n for _, n in parse_loss_spec(spec)]


def build_loss(name: str, cfg: LossConfig | None = None) -> nn.Module:
    """A registered loss by name, or a ``+``-combination of them (``infonce+0.5*triplet``)."""
    terms = parse_loss_spec(name)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return LOSSES[terms[0][1]](cfg or LossConfig())
    return WeightedSum(terms, cfg or LossConfig())
