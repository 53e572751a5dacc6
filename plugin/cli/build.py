"""`tritpack-gguf build`: the patched llama.cpp, CPU or CUDA, cached by content."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from .. import build as _build
from ..errors import TritpackError
from ._common import JsonOpt, print_json, progress_bar


def build_command(
    cuda: Annotated[bool, typer.Option("--cuda", help="Build the CUDA backend too.")] = False,
    arch: Annotated[str | None, typer.Option("--arch", help="CUDA architectures, e.g. 90 or '80;86' (default 80;86;89;90).")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Parallel compile jobs (default: all cores).")] = None,
    portable: Annotated[bool, typer.Option("--portable", help="CPU code for any x86-64 with AVX2, not only this CPU "
                                                              "(binaries that run elsewhere: bench/gpu-bundle.sh).")] = False,
    cmake_arg: Annotated[list[str] | None, typer.Option("--cmake-arg", help="-DNAME=VALUE for CMake (repeatable), "
                                                                           "part of the build key, e.g. -DGGML_CUDA_FA=OFF.")] = None,
    target: Annotated[str, typer.Option("--target", help="native, or a cross build for ARM64 (ggml and llama.cpp's "
                                                         "test-quantize-fns and test-backend-ops only, run with "
                                                         "qemu-aarch64): aarch64 (plain NEON) or aarch64-dotprod.")] = "native",
    json_out: JsonOpt = False,
) -> None:
    """Fetch, verify and patch the pinned llama.cpp, build it with our kernels, print the library folder."""
    if target != "native":
        if cuda or arch or portable or cmake_arg:
            raise TritpackError(f"--target {target} takes none of --cuda, --arch, --portable, --cmake-arg",
                                hint="the cross build is ggml for the CPU with the target's -march")
        with progress_bar(enabled=not json_out) as update:
            result = _build.build_cross(target, jobs=jobs, progress=update)
        if json_out:
            print_json(asdict(result))
            return
        how = "up to date (cached)" if result.cached else f"built in {result.seconds:.0f} s"
        typer.echo(f"{how}: {result.build_dir}; run its programs with "
                   f"{' '.join(_build.qemu_command(result.lib_dir + '/PROGRAM'))}", err=True)
        typer.echo(result.lib_dir)
        return
    if arch and not cuda:
        cuda = True
    archs = arch.replace(",", ";") if arch else None
    with progress_bar(enabled=not json_out) as update:
        result = _build.build(cuda=cuda, archs=archs, jobs=jobs, progress=update, native=not portable,
                              cmake_args=tuple(cmake_arg or ()))
    if json_out:
        print_json(asdict(result))
        return
    how = "up to date (cached)" if result.cached else f"built in {result.seconds:.0f} s"
    typer.echo(f"{how}: {result.build_dir}", err=True)
    if result.ui_note:
        typer.echo(f"note: llama-server has no chat page ({result.ui_note}); {_build.UI_HOW}", err=True)
    typer.echo(result.lib_dir)
