"""The `tritpack-gguf` command: one module per command, errors formatted in one place (main)."""

from __future__ import annotations

import sys

import typer

from ..errors import TritpackError
from . import build as _build
from . import doctor as _doctor

app = typer.Typer(
    name="tritpack-gguf",
    help="Press GGUF models into TP1 (ternary) and TP4 (4-bit codebook) and run them in a patched llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("build")(_build.build_command)
app.command("doctor")(_doctor.doctor_command)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and turns a TritpackError into one line and an exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except TritpackError as e:
        typer.echo(f"tritpack-gguf: error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("tritpack-gguf: interrupted", err=True)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("tritpack-gguf: aborted", err=True)
        return 1
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
