"""Device/precision selection and RNG capture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from musiccli.errors import MtxError
from musiccli.runtime import capture_rng_state, restore_rng_state, select_runtime


def test_cpu_defaults_to_fp32():
    rt = select_runtime("cpu", "auto")
    assert rt.device.type == "cpu" and rt.precision == "fp32" and not rt.use_amp and not rt.needs_scaler


def test_auto_picks_an_available_device():
    rt = select_runtime()
    expected = "cuda" if torch.cuda.is_available() else rt.device.type
    assert rt.device.type == expected
    if rt.device.type == "cpu":
        assert rt.precision == "fp32"


def test_precision_override_and_bad_values():
    assert select_runtime("cpu", "bf16").precision == "bf16"
    with pytest.raises(MtxError, match="unknown precision"):
        select_runtime("cpu", "fp8")
    with pytest.raises(MtxError, match="unknown device"):
        select_runtime("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MtxError, match="CUDA is not available"):
            select_runtime("cuda")


def test_rng_state_roundtrip():
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
