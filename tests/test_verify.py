"""`mtx verify`: bad files are reported as data, the exit code follows the threshold, resume works."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musiccli import verify
from musiccli.download import DownloadRequest, run_download
from musiccli.errors import Interrupted, MtxError
from musiccli.progress import NullProgress, StopFlag
from musiccli.sources.base import DownloadConfig
from musiccli.state import Resume, StateDir
from musiccli.verify import VerifyConfig, run_verify

N, SR = 12, 16000


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    state = StateDir.resolve(tmp_path_factory.mktemp("verify-template"))
    cfg = DownloadConfig(source="synth", n=N, duration=2.0, sample_rate=SR, workers=2)
    assert run_download(state, DownloadRequest(cfg), NullProgress()).ok == N
    return state.root


@pytest.fixture()
def synth_state(template: Path, state: StateDir) -> StateDir:
    shutil.copytree(template, state.root)  # stage records + dataset, as if downloaded here
    return state


def audio_files(state: StateDir) -> list[Path]:
    return sorted(state.dataset_dir("synth").glob("audio/*/*.flac"))


def damage(state: StateDir) -> dict[str, str]:
    """Break 7 of the 12 files in different ways; returns id -> expected problem."""
    files = audio_files(state)
    files[0].unlink()
    files[1].write_bytes(b"")
    files[2].write_bytes(b"<html>this is a web page, not audio</html>\n" * 20)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) // 2])                               # truncated
    sf.write(str(files[4]), np.zeros(SR, dtype=np.float32), SR, format="FLAC")  # 1 s instead of 2 s
    sf.write(str(files[5]), np.zeros(2 * 8000, dtype=np.float32), 8000, format="FLAC")  # 8 kHz
    blob = bytearray(files[6].read_bytes())
    # Flip bits in a sample byte inside the last audio frame: still decodes, but the checksum fails.
    blob[-40] ^= 0x01
    files[6].write_bytes(bytes(blob))
    expected = {files[0]: "missing", files[1]: "corrupt", files[2]: "corrupt", files[3]: "corrupt",
                files[4]: "wrong_duration", files[5]: "wrong_sample_rate", files[6]: "checksum_mismatch"}
    return {p.stem: problem for p, problem in expected.items()}


def test_clean_dataset_passes(synth_state: StateDir, cli):
    res = cli("verify", "synth")
    assert res.exit_code == 0, res.output
    assert "passed" in res.output
    report = run_verify(synth_state, VerifyConfig("synth"))
    assert report.skipped and report.ok == N and report.passed  # same inputs: not checked again


def test_bad_files_are_reported_and_exit_1(synth_state: StateDir, cli):
    expected = damage(synth_state)
    report = run_verify(synth_state, VerifyConfig("synth", workers=2))
    got = {b.id: b.problem for b in report.bad}
    # The bit flip may hit a frame whose CRC libsndfile checks: then it is reported as corrupt.
    flipped = next(i for i, p in expected.items() if p == "checksum_mismatch")
    assert got.pop(flipped) in ("checksum_mismatch", "corrupt")
    expected.pop(flipped)
    assert got == expected
    assert report.ok == N - 7 and not report.passed
    assert report.success_rate == pytest.approx(5 / 12, abs=1e-6)
    empty = next(b for b in report.bad if b.problem == "corrupt" and "empty" in b.detail)
    assert empty.path.endswith(".flac")

    res = cli("verify", "synth")  # complete with the same inputs: reported again, still failing
    assert res.exit_code == 1
    assert "below the --min-success threshold of 90%" in res.output
    assert "missing" in res.output and "wrong_sample_rate" in res.output

    res = cli("verify", "synth", "--min-success", "0.4")
    assert res.exit_code == 0

    res = cli("verify", "synth", "--json", "--min-success", "0.5")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["missing"] == 1 and data["wrong_duration"] == 1 and data["total"] == N
    assert len(data["bad"]) == 7 and {"id", "path", "problem", "detail"} <= set(data["bad"][0])


def test_redownload_changes_identity_so_verify_runs_fresh(synth_state: StateDir):
    first = run_verify(synth_state, VerifyConfig("synth"))
    assert first.passed and not first.skipped
    audio_files(synth_state)[0].unlink()
    # A re-download appends to the ledger: new inputs, so this is a fresh verify, not a replay.
    with open(synth_state.dataset_dir("synth") / "ledger.jsonl", "a") as f:
        f.write('{"id": "synth-000000", "status": "failed", "reason": "redownload"}\n')
    second = run_verify(synth_state, VerifyConfig("synth"))
    assert not second.skipped and second.missing == 1


class StopAfterBatches:
    def __init__(self, batches: int) -> None:
        self.left = batches
        self.stop = StopFlag()

    @contextmanager
    def task(self, description, total=None, unit="items", completed=0):
        outer = self

        class _Task:
            def advance(self, n: int = 1) -> None:
                outer.left -= 1
                if outer.left <= 0:
                    outer.stop.request()

            def update(self, **kw) -> None:
                pass

        yield _Task()

    def check_interrupt(self) -> None:
        self.stop.check()


def test_interrupted_verify_resumes(synth_state: StateDir, monkeypatch: pytest.MonkeyPatch, template: Path,
                                    tmp_path: Path):
    monkeypatch.setattr(verify, "BATCH", 4)
    damage(synth_state)
    with pytest.raises(Interrupted):
        run_verify(synth_state, VerifyConfig("synth"), StopAfterBatches(1))
    root = synth_state.dataset_dir("synth")
    (results,) = root.glob("verify-*.jsonl")
    assert len(results.read_text().splitlines()) == 4

    with pytest.raises(MtxError, match="interrupted verify found"):
        run_verify(synth_state, VerifyConfig("synth"))
    checked = []
    real = verify.check_file
    monkeypatch.setattr(verify, "check_file", lambda ef, tol=None: checked.append(ef.id) or real(ef, tol))
    resumed = run_verify(synth_state, VerifyConfig("synth", resume=Resume.CONTINUE))
    assert len(checked) == N - 4  # only the files not committed before the interrupt

    fresh = run_verify(synth_state, VerifyConfig("synth", resume=Resume.FORCE))
    for report in (resumed, fresh):
        report.seconds = 0.0
    assert resumed.bad == fresh.bad and resumed.counts() == fresh.counts()


def test_continue_with_another_tolerance_is_refused_listing_it(synth_state: StateDir,
                                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(verify, "BATCH", 4)
    with pytest.raises(Interrupted):
        run_verify(synth_state, VerifyConfig("synth"), StopAfterBatches(1))
    with pytest.raises(MtxError, match="duration_tolerance: None -> 0.5"):
        run_verify(synth_state, VerifyConfig("synth", duration_tolerance=0.5, resume=Resume.CONTINUE))
    # A fresh run with the new tolerance is a new check, not a conflict.
    assert run_verify(synth_state, VerifyConfig("synth", duration_tolerance=0.5)).ok == N


def test_threshold_uses_the_exact_rate_not_the_rounded_one():
    report = verify.VerifyReport(source="x", total=10_000_000, ok=8_999_999, min_success=0.9)
    verify._judge(report)
    assert report.success_rate == 0.9 and not report.passed


def test_unknown_or_missing_source(state: StateDir, cli):
    res = cli("verify", "nosuch")
    assert res.exit_code == 1 and "valid sources" in res.output
    res = cli("verify", "synth")
    assert res.exit_code == 1 and "not downloaded" in res.output
    assert not state.dataset_dir("synth").exists()  # verify never creates what it checks


# --------------------------------------------------------------------------- header frame counts
def _ogg_crc(page: bytes) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04c11db7, not reflected, computed with the field zeroed."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_with_granule_past_the_end(path: Path, seconds: float, sr: int, over: int) -> int:
    """A real Ogg/Vorbis file whose last page's granule position (the frame count its header
    declares) is `over` frames past what was encoded, as some encoders write it. Returns the
    frames encoded."""
    wave = (0.1 * np.random.default_rng(7).standard_normal(int(seconds * sr))).astype(np.float32)
    sf.write(str(path), wave, sr, format="OGG", subtype="VORBIS")
    data = bytearray(path.read_bytes())
    last = data.rfind(b"OggS")
    granule = int.from_bytes(data[last + 6:last + 14], "little")
    assert granule == len(wave)
    data[last + 6:last + 14] = (granule + over).to_bytes(8, "little")
    data[last + 22:last + 26] = b"\0\0\0\0"
    data[last + 22:last + 26] = _ogg_crc(bytes(data[last:])).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return len(wave)


@pytest.mark.parametrize(("over_seconds", "problem"), [
    (0.0, None),
    (0.13, None),          # the report's case: 0.13 s short of the header, decodes fine
    (0.4, None),
    (1.5, "corrupt"),      # far outside Vorbis's 0.5 s allowance: really cut short
])
def test_ogg_header_count_a_little_over_what_decodes(tmp_path: Path, over_seconds: float, problem):
    sr = 22050
    path = tmp_path / "soundtrack.ogg"
    encoded = _ogg_with_granule_past_the_end(path, 4.0, sr, int(over_seconds * sr))
    with sf.SoundFile(str(path)) as f:
        declared, decoded = f.frames, len(f.read())
    assert declared == encoded + int(over_seconds * sr)
    assert decoded <= declared - int(over_seconds * sr) + 2048  # libsndfile decodes what is there
    got, detail = verify.check_file(verify.ExpectedFile(id="x", path=path, duration=4.0, sample_rate=sr))
    assert got == problem, detail
    if problem:
        assert detail.startswith("truncated: decoded") and "VORBIS allows 0.50 s less" in detail


@pytest.mark.parametrize(("subtype", "declared", "sr", "allowed"), [
    ("PCM_16", 44100 * 60, 44100, 0),            # WAV: exact
    ("FLOAT", 44100 * 60, 44100, 0),
    ("FLAC", 44100 * 60, 44100, 0),              # FLAC's STREAMINFO count is exact
    ("VORBIS", 44100 * 60, 44100, 22050),        # 0.5 s
    ("vorbis", 48000 * 600, 48000, 24000),       # a long file gets no more
    ("OPUS", 48000 * 60, 48000, 24000),
    ("MPEG_LAYER_III", 44100 * 60, 44100, 52920),   # 2 % of 60 s beats 0.5 s
    ("MPEG_LAYER_III", 44100 * 10, 44100, 22050),
])
def test_frame_count_tolerance_per_format(subtype: str, declared: int, sr: int, allowed: int):
    assert verify.frame_count_tolerance(subtype).allowed(declared, sr) == allowed


def test_wav_shortfall_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A WAV whose decoded stream ends one block short of its header count is truncated, however small the gap."""
    path = tmp_path / "a.wav"
    sf.write(str(path), np.zeros(SR, dtype=np.float32), SR, subtype="PCM_16")
    real_read = sf.SoundFile.read
    calls = {"n": 0}

    def read_minus_tail(self, frames=-1, **kw):  # the decoder gives out 100 frames before the header's count
        calls["n"] += 1
        block = real_read(self, frames, **kw)
        return block[:-100] if calls["n"] == 1 else block[:0]

    monkeypatch.setattr(sf.SoundFile, "read", read_minus_tail)
    problem, detail = verify.check_file(verify.ExpectedFile(id="w", path=path))
    assert problem == "corrupt" and detail.startswith(f"truncated: decoded {SR - 100} of {SR} frames")
