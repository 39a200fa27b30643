"""`mtx serve`: search the library over HTTP (a local API and one web page)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._context import get_ctx


def command(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback requires a token.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port (0: any free one).")] = 8765,
    token: Annotated[str | None, typer.Option("--token", envvar="MTX_SERVE_TOKEN",
                                              help="Token clients must send (Authorization: Bearer or ?token=); "
                                                   "generated when bound beyond loopback.")] = None,
    run: Annotated[str | None, typer.Option("--run", "-r", help="Run name; default: newest trained run.")] = None,
    index: Annotated[str | None, typer.Option("--index", "-i", help="Index name; default <run>--<manifest>.")
                     ] = None,
    backend: Annotated[str, typer.Option("--backend", "-b", help="auto, exact, ann or milvus.")] = "auto",
    uri: Annotated[str | None, typer.Option("--uri", help="With --backend milvus: a Lite file or a server URL.")
                   ] = None,
    server: Annotated[str | None, typer.Option("--server", help="Media server for saved playlists "
                                                                "(jellyfin or navidrome; default MEDIASERVER_TYPE).")
                      ] = None,
) -> None:
    """Serve search over HTTP: a JSON API, one page to search and save playlists, and OpenSubsonic's
    getSonicSimilarTracks. Binds 127.0.0.1 unless told otherwise."""
    from ..serve import ServeConfig, run_serve

    app = get_ctx(ctx)
    cfg = ServeConfig(host=host, port=port, token=token, run=run, index=index, backend=backend, uri=uri,
                      server=server)

    def ready(url: str, tok: str | None) -> None:
        app.out.info(f"serving on {url}" + (f"?token={tok}" if tok and not token else ""))
        if tok and not token:
            app.out.info("clients must send this token (Authorization: Bearer <token> or ?token=); set --token "
                         "or MTX_SERVE_TOKEN to choose one")

    try:
        run_serve(app.state, cfg, on_ready=ready)
    except KeyboardInterrupt:
        app.out.info("stopped")
