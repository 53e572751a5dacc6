"""LM Studio: place a GGUF in its models folder as `<models>/<publisher>/<name>/<file>.gguf`.

The models folder is found the way LM Studio finds it: `--models-dir`, else $LMSTUDIO_MODELS_DIR,
else the LM Studio home (the folder named in `~/.lmstudio-home-pointer`, else `~/.cache/lm-studio`
when it exists, else `~/.lmstudio`) with its `settings.json` `downloadsFolder` when set, else
`<home>/models`.

LM Studio runs its own stock llama.cpp engine, which cannot load TP1/TP4: `compat="auto"` places a
stock-type export (TP1 -> Q4_0 exactly, TP4 -> Q8_0); `native` places the TritPack file for a
swapped engine. The file is copied by default (LM Studio's own `lms import` moves; we never take a
user's file away unasked). Nothing is overwritten; a publisher or model folder that is a symlink is
not followed for writing (every step below the models folder is opened with O_NOFOLLOW).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

from .errors import TritpackError
from .apps import Exporter, Progress, call_exporter, default_exporter, no_progress, plan_compat

ENV_MODELS_DIR = "LMSTUDIO_MODELS_DIR"
MODES = ("copy", "symlink", "hardlink", "move")
DEFAULT_PUBLISHER = "tritpack"
_WINDOWS_RESERVED = set('<>:"|?*')


def lmstudio_models_dir(models_dir: str | Path | None = None, *, home: Path | None = None) -> tuple[Path, str]:
    """(the models folder, how it was found). `home` stands in for the user's home (tests)."""
    if models_dir is not None:
        return Path(models_dir).expanduser(), "--models-dir"
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env).expanduser(), f"${ENV_MODELS_DIR}"
    home = home if home is not None else Path.home()
    lm_home, how = None, ""
    pointer = home / ".lmstudio-home-pointer"
    try:
        target = pointer.read_text(encoding="utf-8").strip().splitlines()[0].strip() if pointer.is_file() else ""
    except (OSError, UnicodeDecodeError, IndexError):
        target = ""
    if target and Path(target).expanduser().is_dir():
        lm_home, how = Path(target).expanduser(), f"{pointer}"
    elif (home / ".cache" / "lm-studio" / "models").is_dir():
        lm_home, how = home / ".cache" / "lm-studio", "~/.cache/lm-studio (exists)"
    else:
        lm_home, how = home / ".lmstudio", "~/.lmstudio (default)"
    try:
        settings = json.loads((lm_home / "settings.json").read_text(encoding="utf-8"))
        folder = settings.get("downloadsFolder") if isinstance(settings, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        folder = None
    if isinstance(folder, str) and folder and Path(folder).expanduser().is_dir():
        return Path(folder).expanduser(), f"downloadsFolder in {lm_home / 'settings.json'}"
    return lm_home / "models", how


def validate_component(value: str, what: str) -> str:
    """A publisher or model folder name: one plain path component.

    Refuses empty names, `.`/`..` anywhere, `/` and `\\`, absolute paths, NUL bytes, control characters
    and the characters Windows forbids in file names.
    """
    why = None
    if not isinstance(value, str) or not value.strip():
        why = "it is empty"
    elif "\x00" in value:
        why = "it contains a NUL byte"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        why = "it contains control characters"
    elif os.path.isabs(value) or value.startswith(("/", "\\")):
        why = "it is an absolute path"
    elif "/" in value or "\\" in value:
        why = "it contains a path separator"
    elif ".." in value or value in (".",):
        why = "it contains '..'" if ".." in value else "it is '.'"
    elif value.startswith("."):
        why = "it starts with '.' (a hidden folder LM Studio does not list)"
    elif _WINDOWS_RESERVED & set(value):
        why = "it contains one of <>:\"|?*"
    elif len(value.encode("utf-8")) > 200:
        why = "it is too long"
    if why:
        raise TritpackError(f"invalid LM Studio {what} {value!r}: {why}",
                            hint=f"pass --{what} with letters, digits, '-', '_' and '.'")
    return value


def _stem(path: Path) -> str:
    s = path.name[:-5] if path.name.lower().endswith(".gguf") else path.name
    return s or "model"


def _default_name(path: Path) -> str:
    s = "".join(c if (c.isalnum() or c in "-_.") else "-" for c in _stem(path)).strip("-.") or "model"
    while ".." in s:
        s = s.replace("..", ".")
    return s


def _open_dir_nofollow(parent_fd: int, name: str, *, create: bool, path: Path) -> tuple[int, bool]:
    """Open (creating it when asked) the folder `name` under `parent_fd` without following a symlink."""
    made = False
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(name, flags, dir_fd=parent_fd), made
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            what = "a symlink" if os.path.islink(path) else "not a folder"
            raise TritpackError(f"{what} in the models folder: not followed for writing", path=path,
                                hint="remove it or choose another --publisher/--name") from None
        raise
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        made = True
    except FileExistsError:
        pass
    try:
        return os.open(name, flags, dir_fd=parent_fd), made
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise TritpackError("a symlink appeared in the models folder: not followed for writing", path=path) from None
        raise


def _check_models_root(root: Path, *, explicit: bool) -> bool:
    """Is the models folder there (False: it would be created) and writable? TritpackError if not."""
    for parent in [root, *root.parents]:
        if parent.exists() or parent.is_symlink():
            break
    else:  # pragma: no cover
        parent = Path("/")
    if parent != root:
        if not explicit and not root.parent.is_dir():
            raise TritpackError("LM Studio's models folder was not found", path=root,
                                hint=f"start LM Studio once, or pass --models-dir (or set {ENV_MODELS_DIR})")
        if not parent.is_dir():
            raise TritpackError("the models folder cannot be created: a file is in the way", path=parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise TritpackError("the models folder cannot be created: no write permission", path=parent)
        return False
    if not root.is_dir():
        raise TritpackError("the models folder is not a folder", path=root)
    if not os.access(root, os.W_OK | os.X_OK):
        raise TritpackError("the models folder is not writable", path=root,
                            hint="fix its permissions, or pass --models-dir")
    return True


def import_to_lmstudio(
    src: str | Path,
    *,
    publisher: str | None = None,
    name: str | None = None,
    mode: str = "copy",
    compat: str = "auto",
    models_dir: str | Path | None = None,
    dry_run: bool = False,
    exporter: Exporter | None = None,
    home: Path | None = None,
    progress: Progress = no_progress,
) -> dict:
    """Place `src` in LM Studio's models folder as `<models>/<publisher>/<name>/<file>.gguf`.

    mode: copy (default) | symlink | hardlink | move, for a file placed as it is. A stock export
    (compat `auto` on a TritPack file: TP1 -> Q4_0 exact, TP4 -> Q8_0) is always a new file, written
    by `exporter(src, dst, to)` (default tritpack_gguf.export.export_gguf) into a hidden temporary
    folder next to the destination and then linked into place. `native` places the TritPack file
    itself. Never overwrites; `dry_run` checks everything and writes nothing. Returns what was (or
    would be) done.
    """
    src = Path(src)
    mode = (mode or "copy").lower()
    if mode not in MODES:
        raise TritpackError(f"the mode must be one of {', '.join(MODES)}, not {mode!r}")
    from .converters.header import read_header

    summary = read_header(src)
    to, note = plan_compat(summary, compat, allowed=("auto", "native"))
    if to is not None and mode in ("symlink", "hardlink"):
        raise TritpackError(f"cannot {mode} a {to.upper()} export: it is a new file",
                            hint="drop the flag (the export is written in place), or use --compat native to link the TritPack file")
    publisher = validate_component(publisher if publisher is not None else DEFAULT_PUBLISHER, "publisher")
    name = validate_component(name if name is not None else _default_name(src), "name")
    file_name = f"{_stem(src)}.{to.upper()}.gguf" if to else src.name
    if not file_name.lower().endswith(".gguf"):
        file_name += ".gguf"
    validate_component(file_name, "file name")
    root, found_by = lmstudio_models_dir(models_dir, home=home)
    explicit = models_dir is not None or found_by.startswith("$")
    dst = root / publisher / name / file_name
    action = f"export {'+'.join(k for k, h in (('TP1', summary.has_tp1), ('TP4', summary.has_tp4)) if h)} to {to.upper()}" if to else mode
    result: dict[str, Any] = {"source": str(src), "destination": str(dst), "models_dir": str(root),
                              "models_dir_found_by": found_by, "publisher": publisher, "name": name,
                              "mode": mode, "action": action, "compat": compat.lower(), "export": to,
                              "note": note, "dry_run": dry_run}

    root_exists = _check_models_root(root, explicit=explicit)
    # what is already there, without following links below the models folder
    if root_exists:
        for p in (root / publisher, root / publisher / name):
            if p.is_symlink():
                raise TritpackError("a symlink in the models folder: not followed for writing", path=p,
                                    hint="remove it or choose another --publisher/--name")
            if p.exists() and not p.is_dir():
                raise TritpackError("not a folder, cannot put a model in it", path=p)
    if os.path.lexists(dst):
        raise TritpackError("already exists: refusing to overwrite", path=dst,
                            hint="remove it first, or pick another --name/--publisher")
    if mode in ("symlink", "hardlink", "move") and to is None and not src.is_file():
        raise TritpackError("not a regular file", path=src)
    if dry_run:
        return result

    if not root_exists:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TritpackError(f"cannot create the models folder: {e.strerror}", path=root) from None
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)))
            fd_pub, _ = _open_dir_nofollow(fds[-1], publisher, create=True, path=root / publisher)
            fds.append(fd_pub)
            fd_name, _ = _open_dir_nofollow(fd_pub, name, create=True, path=root / publisher / name)
            fds.append(fd_name)
        except PermissionError:
            raise TritpackError("the models folder is not writable", path=root) from None
        except OSError as e:
            raise TritpackError(f"cannot create {dst.parent}: {e.strerror}", path=dst.parent) from None
        _place(src, dst, fd_name, mode, to, exporter, progress, result)
    finally:
        for fd in reversed(fds):
            os.close(fd)
    result["bytes"] = src.stat().st_size if (mode == "symlink" and to is None) else dst.lstat().st_size
    return result


def _link_noreplace(tmp_name: str, final: str, dir_fd: int, dst: Path) -> None:
    """Move dir_fd/tmp_name to dir_fd/final without ever replacing an existing file."""
    try:
        os.link(tmp_name, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise TritpackError("already exists: refusing to overwrite", path=dst) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # a filesystem without hard links (exFAT, some network shares): check, then rename
        try:
            os.stat(final, dir_fd=dir_fd, follow_symlinks=False)
            raise TritpackError("already exists: refusing to overwrite", path=dst)
        except FileNotFoundError:
            os.rename(tmp_name, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
    os.unlink(tmp_name, dir_fd=dir_fd)


def _copy_into(src: Path, tmp_name: str, dir_fd: int, progress: Progress) -> None:
    total = src.stat().st_size
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                 0o644, dir_fd=dir_fd)
    with open(src, "rb") as fi, os.fdopen(fd, "wb") as fo:
        done = 0
        while chunk := fi.read(1 << 22):
            fo.write(chunk)
            done += len(chunk)
            progress("copying", done, total)
        fo.flush()
        os.fsync(fo.fileno())


def _place(src: Path, dst: Path, dir_fd: int, mode: str, to: str | None, exporter: Exporter | None,
           progress: Progress, result: dict) -> None:
    final = dst.name
    tmp_name = f".{final}.tritpack-{secrets.token_hex(4)}.tmp"
    try:
        if to is not None:
            progress(f"exporting to {to.upper()}")
            os.mkdir(tmp_name, 0o700, dir_fd=dir_fd)
            tmp_dir = dst.parent / tmp_name  # the folder was opened without following links just above
            out = tmp_dir / final
            result["export_report"] = call_exporter(exporter or default_exporter(), src, out, to, progress)
            st = os.lstat(out) if os.path.lexists(out) else None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise TritpackError(f"the {to.upper()} export wrote no file", path=out)
            inner = f"{tmp_name}/{final}"
            _link_noreplace(inner, final, dir_fd, dst)
        elif mode == "symlink":
            try:
                os.symlink(str(src.resolve()), final, dir_fd=dir_fd)
            except FileExistsError:
                raise TritpackError("already exists: refusing to overwrite", path=dst) from None
        elif mode == "hardlink":
            try:
                os.link(str(src.resolve()), final, dst_dir_fd=dir_fd)
            except FileExistsError:
                raise TritpackError("already exists: refusing to overwrite", path=dst) from None
            except OSError as e:
                if e.errno == errno.EXDEV:
                    raise TritpackError("cannot hard-link across filesystems", path=dst,
                                        hint="use --copy or --symlink") from None
                raise TritpackError(f"cannot hard-link: {e.strerror}", path=dst, hint="use --copy or --symlink") from None
        elif mode == "move":
            try:
                os.link(str(src.resolve()), final, dst_dir_fd=dir_fd)
                os.unlink(src)
            except FileExistsError:
                raise TritpackError("already exists: refusing to overwrite", path=dst) from None
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                    raise
                _copy_into(src, tmp_name, dir_fd, progress)  # another filesystem: copy, place, then remove
                _link_noreplace(tmp_name, final, dir_fd, dst)
                os.unlink(src)
        else:
            _copy_into(src, tmp_name, dir_fd, progress)
            _link_noreplace(tmp_name, final, dir_fd, dst)
    except PermissionError as e:
        raise TritpackError(f"cannot write: {e.strerror}", path=dst.parent) from None
    finally:
        _remove_tmp(tmp_name, dir_fd)


def _remove_tmp(tmp_name: str, dir_fd: int) -> None:
    try:
        st = os.stat(tmp_name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if sys.version_info >= (3, 11):
            shutil.rmtree(tmp_name, dir_fd=dir_fd, ignore_errors=True)  # fd-based: never follows links
        else:  # pragma: no cover
            shutil.rmtree(f"/proc/self/fd/{dir_fd}/{tmp_name}", ignore_errors=True)
    else:
        os.unlink(tmp_name, dir_fd=dir_fd)
