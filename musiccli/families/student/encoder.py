"""The ``student`` audio encoder: the music tower of a trained student run (``mtx embed --audio-encoder
student --model RUN``), registered in the audio encoder registry like any other encoder."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...encoders.base import AudioEncoder, EncoderOptions, EncoderSpec, register
from ...errors import MtxError, unknown_choice
from ...onnxio import check_parity
from ...runtime import Runtime
from .model import SAMPLE_RATE, WEIGHTS_FILE, StudentModel, is_student_checkpoint

log = logging.getLogger(__name__)


def resolve_student_checkpoint(model: str | None, state_root: Path | None) -> Path:
    """``--model``: a run name in the state dir, a run folder or a checkpoint folder -> checkpoint folder."""
    if not model:
        raise MtxError("the student encoder needs a trained student run",
                       hint="pass --model RUN (a run trained with `mtx train --objective student`)")
    candidates = []
    p = Path(model).expanduser()
    if p.exists():
        candidates.append(p)
    if state_root is not None:
        candidates.append(state_root / "runs" / model)
    for c in candidates:
        for sub in (c, c / "best", c / "latest"):
            if is_student_checkpoint(sub) and (sub / WEIGHTS_FILE).exists():
                return sub.resolve()
    raise MtxError(f"no student checkpoint found for --model {model!r}",
                   hint="train one with `mtx train --objective student --run NAME`, then pass --model NAME")


RUNTIMES = ("auto", "onnx", "torch")


@register(EncoderSpec(
    name="student",
    description="the music tower of a trained student run (--model RUN): 256-d shared music-text space",
    sample_rate=SAMPLE_RATE, window_s=30.0, hop_s=30.0, default_aggregation="mean", version="1",
    options=("runtime",),
))
class StudentEncoder(AudioEncoder):
    """``-O runtime=auto|onnx|torch``: on the CPU, ``auto`` runs the music tower through onnxruntime (the
    tower exported once into the models cache and checked against PyTorch) with the NumPy client front
    end, about 1.3-2x the PyTorch path's speed per clip; on a GPU, or when onnxruntime or onnx is missing,
    PyTorch. The two agree to 1e-4 (checked at load), and the runtime used is part of the store's identity."""

    def __init__(self, options: EncoderOptions, runtime: Runtime) -> None:
        super().__init__(options, runtime)
        state_root = options.cache_dir.parent if options.cache_dir is not None else None
        self.checkpoint = resolve_student_checkpoint(options.model, state_root)
        self.model = StudentModel.from_pretrained(self.checkpoint, device=runtime.device).eval()
        from ...state import file_sha256

        # Retrained weights change every vector: their hash keys the stage config and the ONNX cache.
        self.weights_sha = file_sha256(self.checkpoint / WEIGHTS_FILE)[:16]
        want = str(options.extra.get("runtime", "auto"))
        if want not in RUNTIMES:
            raise unknown_choice("student runtime", want, RUNTIMES)
        self._session = self._front = None
        if want == "onnx" or (want == "auto" and runtime.device.type == "cpu"):
            self._open_onnx(required=want == "onnx")
        self.runtime_name = "onnx" if self._session is not None else "torch"

    def _open_onnx(self, required: bool) -> None:
        try:
            from .frontend import ClientLogMel
            from .onnx import client_session, export_music_graph

            cache = (self.options.cache_dir or self.checkpoint) / "student-onnx" / self.weights_sha
            path = cache / "student_music_encoder.onnx"
            if not path.exists():
                cache.mkdir(parents=True, exist_ok=True)
                tmp = cache / f".{path.name}.{os.getpid()}.tmp"   # shards may export at the same time
                cfg = self.model.student_config
                export_music_graph(self.model.music.cpu(), tmp, 17, cfg.n_mels, cfg.blocks)
                self.model.music.to(self.runtime.device)
                tmp.replace(path)
            session = client_session(path)
            probe = np.random.default_rng(0).random((2, 1, self.model.student_config.n_mels, 101), np.float32)
            got = session.run(["music_embedding"], {"mel_spectrogram": probe})[0]
            with torch.inference_mode():
                ref = self.model.music(torch.from_numpy(probe).to(self.runtime.device)).float().cpu().numpy()
            diff = float(np.abs(got - ref).max())
            check_parity(diff, "the ONNX music tower")
        except (ImportError, MtxError, RuntimeError, OSError) as e:
            if required:
                raise MtxError(f"cannot run the student music tower in onnxruntime: {e}",
                               hint="pip install 'musiccli[onnx]', or use -O runtime=torch") from None
            log.info("student encoder: PyTorch runtime (onnxruntime path unavailable: %s)", e)
            return
        self._session = session
        self._front = ClientLogMel(self.model.student_config.preprocessing())
        log.info("student encoder: onnxruntime music tower (%s), max abs diff to PyTorch %.1g", path, diff)

    @property
    def model_id(self) -> str:
        return str(self.options.model)

    @property
    def window_dim(self) -> int:
        return self.model.student_config.dim

    def default_window(self) -> tuple[float, float]:
        crop = self.model.student_config.crop_s
        return crop, crop

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "weights_sha256": self.weights_sha, "runtime": self.runtime_name}

    @torch.inference_mode()
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        if self._session is None:
            return self.model.embed_waves(windows).float()
        waves = windows.detach().cpu().float().numpy()
        mel = np.concatenate([self._front(w) for w in waves])
        out = self._session.run(["music_embedding"], {"mel_spectrogram": mel})[0]
        return torch.from_numpy(out).to(windows.device)
