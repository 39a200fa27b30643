"""The `mtx` command line: Typer + Rich only; every command calls one core function."""
