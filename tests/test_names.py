"""The torch-free name lists used by --help and shell completion equal the real registries."""

from __future__ import annotations

import subprocess
import sys

from musiccli import names


def test_names_match_the_registries() -> None:
    from musiccli.encoders import AGGREGATIONS, encoder_names
    from musiccli.encoders.text import BACKBONE_ALIASES
    from musiccli.sources import source_names
    from musiccli.training.losses import LOSSES

    assert sorted(names.SOURCES) == source_names()
    assert sorted(names.AUDIO_ENCODERS) == encoder_names()
    assert sorted(names.LOSSES) == sorted(LOSSES)
    assert tuple(names.TEXT_BACKBONES) == tuple(BACKBONE_ALIASES)
    assert tuple(names.AGGREGATIONS) == tuple(AGGREGATIONS)


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom musiccli.cli.app import app\n"
            "try:\n    app(['embed', '--help'], prog_name='mtx')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "NO-TORCH" in out.stderr, out.stderr
    for name in names.AUDIO_ENCODERS:
        assert name in out.stdout
