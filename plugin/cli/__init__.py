"""The `tritpack-gguf` command: one module per command, errors formatted in one place (main)."""

from __future__ import annotations

import signal
import sys

import typer

from ..errors import TritpackError
from . import bench as _bench
from . import build as _build
from . import convert as _convert
from . import demo as _demo
from . import doctor as _doctor
from . import evaluate as _evaluate
from . import export as _export
from . import inspect as _inspect
from . import lmstudio as _lmstudio
from . import ollama as _ollama
from . import rpc_server as _rpc_server
from . import run as _run
from . import serve as _serve
from . import verify as _verify

app = typer.Typer(
    name="tritpack-gguf",
    help="Press GGUF models into TP1 (ternary) and TP4 (4-bit codebook) and run them in a patched llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("build")(_build.build_command)
app.command("doctor")(_doctor.doctor_command)
app.command("convert")(_convert.convert_command)
app.command("export")(_export.export_command)
app.command("inspect")(_inspect.inspect_command)
app.command("estimate")(_inspect.estimate_command)
app.command("run")(_run.run_command)
app.command("verify")(_verify.verify_command)
app.command("bench")(_bench.bench_command)
app.command("eval")(_evaluate.eval_command)
app.command("serve")(_serve.serve_command)
app.command("rpc-server")(_rpc_server.rpc_server_command)
app.command("demo")(_demo.demo_command)
app.add_typer(_ollama.app, name="ollama", help="Convert what Ollama has; register converted models with Ollama.")
app.add_typer(_lmstudio.app, name="lmstudio", help="Import converted models into LM Studio.")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and turns a TritpackError into one line and an exit code
    (usage errors are click's own, exit code 2)."""
    def on_sigterm(signum, frame):  # like Ctrl-C: unwind, remove temporary files, exit non-zero
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        app(args=argv, standalone_mode=True)
    except TritpackError as e:
        typer.echo(f"tritpack-gguf: error: {e}", err=True)
        return e.exit_code
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
