"""`mtx export`: write a run's model as hf/ (save_pretrained + model card) and onnx/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._context import get_ctx
from ._output import escape
from ._options import Checkpoint, Continue, Force, JsonOut, Run


def command(
    ctx: typer.Context,
    run: Run = None,
    checkpoint: Checkpoint = "best",
    formats: Annotated[list[str] | None, typer.Option("--format", "-f",
                                                      help="hf and/or onnx (repeatable); default both.")] = None,
    opset: Annotated[int, typer.Option("--opset", min=13, help="ONNX opset version.")] = 17,
    target: Annotated[str, typer.Option("--target", help="mtx (hf/ + onnx/) or audiomuse (an ONNX text model "
                                                          "AudioMuse-AI loads via CLAP_TEXT_MODEL_PATH; needs a run "
                                                          "trained on audiomuse-clap).",
                                        autocompletion=lambda incomplete: ["mtx", "audiomuse"])] = "mtx",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder; default <state>/exports/<run>/<checkpoint>.")] = None,
    allow_large: Annotated[bool, typer.Option("--allow-large", help="Student runs: export even above 5 MB "
                                              "(music) / 8 MB (text) of ONNX.")] = False,
    cont: Continue = False,
    force: Force = False,
    as_json: JsonOut = False,
) -> None:
    """Export a trained run for use outside mtx: hf/ (from_pretrained + model card) and onnx/ (verified vs PyTorch)."""
    from ..export import FORMATS, ExportConfig, run_export
    from ..state import Resume

    app = get_ctx(ctx, json_mode=as_json)
    cfg = ExportConfig(run=run, checkpoint=checkpoint, formats=tuple(formats) if formats else FORMATS, opset=opset,
                       out=out, target=target, allow_large=allow_large, resume=Resume.from_flags(cont, force))
    with app.progress(resume_hint="mtx export --continue") as progress:
        result = run_export(app.state, cfg, progress)
    if result.skipped:
        app.out.info(f"export of run {result.run} ({result.checkpoint}) is up to date")
    for fmt in (*FORMATS, "audiomuse"):
        if fmt in result.paths:
            app.out.info(f"{fmt}: {escape(str(result.paths[fmt]))}")
    sizes = result.details.get("sizes_mb")
    if sizes:
        app.out.info(f"ONNX sizes: music {sizes['music']:.2f} MB, text {sizes['text']:.2f} MB; client check "
                     f"(preprocessing.json + tokenizer.json): max abs diff "
                     f"{max(result.details['client'].values()):.2g}")
    if result.onnx_max_abs_diff is not None:
        app.out.info(f"ONNX max abs diff vs PyTorch: {result.onnx_max_abs_diff:.2g}")
    if "audiomuse" in result.paths:
        app.out.info(f"set CLAP_TEXT_MODEL_PATH={result.paths['audiomuse']} in AudioMuse-AI; read "
                     f"{Path(result.paths['audiomuse']).parent / 'README.md'} about the tokenizer")
    app.out.result(result)
