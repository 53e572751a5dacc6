"""LM Studio import, in a temp home: both folder layouts, each link mode, collisions, a models folder
that cannot be written, symlinks inside the models folder, and names that try to leave it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

import tritpack_gguf.converters.gguf_types  # noqa: F401  (TP1/TP4 known to gguf)
from tritpack_gguf import lmstudio as lm
from tritpack_gguf.cli import lmstudio as lm_cli
from tritpack_gguf.errors import TritpackError

Q = gguf.GGMLQuantizationType
TP1, TP4 = Q(80), Q(81)


def write_gguf(path: Path, kind: str = "stock") -> Path:
    """A tiny llama GGUF: stock (F32), tp1 or tp4 (one packed tensor)."""
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    if kind == "stock":
        w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((8, 64)).astype(np.float32))
    else:
        t = TP1 if kind == "tp1" else TP4
        w.add_tensor("blk.0.attn_q.weight", rng.integers(0, 255, (8, 15 if t == TP1 else 36), dtype=np.uint8), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class FakeExporter:
    """Stands in for tritpack_gguf.export.export_gguf: writes a small valid stock GGUF at dst."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, Path, str]] = []

    def __call__(self, src, dst, to, *, force=False):
        self.calls.append((Path(src), Path(dst), to))
        assert not Path(dst).exists()
        write_gguf(Path(dst), "stock")
        return {"output": str(dst), "to": to}


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv(lm.ENV_MODELS_DIR, raising=False)
    return h


@pytest.fixture
def model(tmp_path):
    (tmp_path / "src").mkdir()
    return write_gguf(tmp_path / "src" / "Tiny-Model.gguf")


# ------------------------------------------------------------------------------------------------
# finding the models folder
# ------------------------------------------------------------------------------------------------

def test_models_dir_layouts(home, tmp_path, monkeypatch):
    # nothing installed: ~/.lmstudio/models is the default, and an import refuses to invent it
    assert lm.lmstudio_models_dir() == (home / ".lmstudio" / "models", "~/.lmstudio (default)")
    (home / ".lmstudio" / "models").mkdir(parents=True)
    assert lm.lmstudio_models_dir()[0] == home / ".lmstudio" / "models"
    # the older layout wins when it exists
    (home / ".cache" / "lm-studio" / "models").mkdir(parents=True)
    assert lm.lmstudio_models_dir()[0] == home / ".cache" / "lm-studio" / "models"
    # LM Studio's home pointer
    other = tmp_path / "elsewhere"
    (other / "models").mkdir(parents=True)
    (home / ".lmstudio-home-pointer").write_text(f"{other}\n")
    assert lm.lmstudio_models_dir()[0] == other / "models"
    # a downloadsFolder set in LM Studio's settings
    custom = tmp_path / "big-disk" / "models"
    custom.mkdir(parents=True)
    (other / "settings.json").write_text(json.dumps({"downloadsFolder": str(custom)}))
    assert lm.lmstudio_models_dir()[0] == custom
    # the environment and the option override everything
    monkeypatch.setenv(lm.ENV_MODELS_DIR, str(tmp_path / "env-models"))
    assert lm.lmstudio_models_dir() == (tmp_path / "env-models", f"${lm.ENV_MODELS_DIR}")
    assert lm.lmstudio_models_dir(tmp_path / "opt") == (tmp_path / "opt", "--models-dir")


@pytest.mark.parametrize("layout", [".lmstudio/models", ".cache/lm-studio/models"])
def test_import_copy_into_each_layout(home, model, layout):
    models = home / layout
    models.mkdir(parents=True)
    r = lm.import_to_lmstudio(model, publisher="me", name="tiny")
    dst = models / "me" / "tiny" / "Tiny-Model.gguf"
    assert r["destination"] == str(dst) and r["mode"] == "copy" and r["export"] is None
    assert dst.read_bytes() == model.read_bytes() and not dst.is_symlink()
    assert os.stat(dst).st_ino != os.stat(model).st_ino
    assert model.is_file()  # copied: the user's file stays
    assert sorted(p.name for p in dst.parent.iterdir()) == ["Tiny-Model.gguf"]  # no temp file left


def test_import_without_lmstudio_refuses(home, model):
    with pytest.raises(TritpackError, match="models folder was not found"):
        lm.import_to_lmstudio(model)
    assert not (home / ".lmstudio").exists()


def test_default_publisher_and_name(home, model):
    (home / ".lmstudio").mkdir()  # LM Studio home without a models folder yet: created
    r = lm.import_to_lmstudio(model)
    assert Path(r["destination"]) == home / ".lmstudio" / "models" / lm.DEFAULT_PUBLISHER / "Tiny-Model" / "Tiny-Model.gguf"
    assert Path(r["destination"]).is_file()


# ------------------------------------------------------------------------------------------------
# link modes and collisions
# ------------------------------------------------------------------------------------------------

def test_import_symlink(tmp_path, model):
    r = lm.import_to_lmstudio(model, mode="symlink", models_dir=tmp_path / "models")
    dst = Path(r["destination"])
    assert dst.is_symlink() and os.readlink(dst) == str(model.resolve())
    assert dst.read_bytes() == model.read_bytes() and r["bytes"] == model.stat().st_size


def test_import_hardlink(tmp_path, model):
    r = lm.import_to_lmstudio(model, mode="hardlink", models_dir=tmp_path / "models")
    dst = Path(r["destination"])
    assert not dst.is_symlink() and os.stat(dst).st_ino == os.stat(model).st_ino


def test_import_move(tmp_path, model):
    data = model.read_bytes()
    r = lm.import_to_lmstudio(model, mode="move", models_dir=tmp_path / "models")
    assert not model.exists() and Path(r["destination"]).read_bytes() == data


@pytest.mark.parametrize("mode", lm.MODES)
def test_collision_refused_in_every_mode(tmp_path, model, mode):
    models = tmp_path / "models"
    existing = models / "pub" / "m" / model.name
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"the user's other model")
    with pytest.raises(TritpackError, match="refusing to overwrite"):
        lm.import_to_lmstudio(model, publisher="pub", name="m", mode=mode, models_dir=models)
    assert existing.read_bytes() == b"the user's other model" and model.is_file()
    # a dangling symlink at the destination counts as taken too
    existing.unlink()
    existing.symlink_to(tmp_path / "nowhere")
    with pytest.raises(TritpackError, match="refusing to overwrite"):
        lm.import_to_lmstudio(model, publisher="pub", name="m", mode=mode, models_dir=models)
    assert not (tmp_path / "nowhere").exists()


def test_dry_run_writes_nothing(tmp_path, model):
    models = tmp_path / "models"
    r = lm.import_to_lmstudio(model, publisher="p", name="n", mode="move", models_dir=models, dry_run=True)
    assert r["dry_run"] is True and r["action"] == "move" and r["destination"] == str(models / "p" / "n" / model.name)
    assert not models.exists() and model.is_file()


# ------------------------------------------------------------------------------------------------
# compat: stock export for LM Studio's engine, or the TritPack file for a swapped one
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,to", [("tp1", "q4_0"), ("tp4", "q8_0")])
def test_auto_imports_stock_export(tmp_path, kind, to):
    src = write_gguf(tmp_path / f"m-{kind}.gguf", kind)
    exp = FakeExporter()
    r = lm.import_to_lmstudio(src, publisher="p", name="n", models_dir=tmp_path / "models", exporter=exp)
    dst = tmp_path / "models" / "p" / "n" / f"m-{kind}.{to.upper()}.gguf"
    assert r["export"] == to and Path(r["destination"]) == dst and "cannot load" in r["note"]
    (s, d, t), = exp.calls
    assert (s, t) == (src, to) and d.name == dst.name and d.parent.parent == dst.parent
    assert dst.is_file() and {int(x.tensor_type) for x in gguf.GGUFReader(dst).tensors} <= {0, 1, 8}
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]  # the temporary folder is gone
    assert src.is_file()


def test_auto_export_refuses_link_modes(tmp_path):
    src = write_gguf(tmp_path / "m.gguf", "tp4")
    for mode in ("symlink", "hardlink"):
        with pytest.raises(TritpackError, match="cannot .* export"):
            lm.import_to_lmstudio(src, mode=mode, models_dir=tmp_path / "models", exporter=FakeExporter())
    assert not (tmp_path / "models").exists()


def test_native_imports_tritpack_file(tmp_path):
    src = write_gguf(tmp_path / "m.gguf", "tp4")
    exp = FakeExporter()
    r = lm.import_to_lmstudio(src, compat="native", mode="hardlink", models_dir=tmp_path / "models", exporter=exp)
    assert exp.calls == [] and r["export"] is None
    assert os.stat(r["destination"]).st_ino == os.stat(src).st_ino


def test_stock_file_is_not_exported(tmp_path, model):
    exp = FakeExporter()
    r = lm.import_to_lmstudio(model, models_dir=tmp_path / "models", exporter=exp)
    assert exp.calls == [] and Path(r["destination"]).read_bytes() == model.read_bytes()


def test_compat_choices(tmp_path, model):
    with pytest.raises(TritpackError, match="--compat must be one of auto, native"):
        lm.import_to_lmstudio(model, compat="q4_0", models_dir=tmp_path / "models")
    with pytest.raises(TritpackError, match="mode must be one of"):
        lm.import_to_lmstudio(model, mode="teleport", models_dir=tmp_path / "models")


# ------------------------------------------------------------------------------------------------
# folders that cannot be written, symlinks, hostile names
# ------------------------------------------------------------------------------------------------

def test_models_dir_under_a_regular_file(tmp_path, model):
    """Real filesystem check (works as root too): the models folder's parent is a regular file."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    for dry in (True, False):
        with pytest.raises(TritpackError, match="a file is in the way"):
            lm.import_to_lmstudio(model, models_dir=blocker / "models", dry_run=dry)
    blocker2 = tmp_path / "models-is-a-file"
    blocker2.write_text("x")
    with pytest.raises(TritpackError, match="not a folder"):
        lm.import_to_lmstudio(model, models_dir=blocker2)
    assert blocker.read_text() == "x" and blocker2.read_text() == "x"


def test_models_dir_without_write_permission(tmp_path, model, monkeypatch):
    """Permission logic with os.access monkeypatched (tests run as root, where chmod stops nothing)."""
    models = tmp_path / "models"
    models.mkdir()
    real_access = os.access
    monkeypatch.setattr(lm.os, "access", lambda p, m, *a, **k: False if Path(p) == models else real_access(p, m, *a, **k))
    with pytest.raises(TritpackError, match="not writable"):
        lm.import_to_lmstudio(model, models_dir=models)
    with pytest.raises(TritpackError, match="not writable"):
        lm.import_to_lmstudio(model, models_dir=models, dry_run=True)
    assert list(models.iterdir()) == []
    # a models folder that does not exist yet, under a parent without write permission
    monkeypatch.setattr(lm.os, "access", lambda p, m, *a, **k: False if Path(p) == tmp_path else real_access(p, m, *a, **k))
    with pytest.raises(TritpackError, match="no write permission"):
        lm.import_to_lmstudio(model, models_dir=tmp_path / "new-models")
    assert not (tmp_path / "new-models").exists()


@pytest.mark.parametrize("which", ["publisher", "name"])
def test_symlink_inside_models_folder_not_followed(tmp_path, model, which):
    models = tmp_path / "models"
    outside = tmp_path / "outside"
    outside.mkdir()
    if which == "publisher":
        models.mkdir()
        (models / "pub").symlink_to(outside, target_is_directory=True)
    else:
        (models / "pub").mkdir(parents=True)
        (models / "pub" / "n").symlink_to(outside, target_is_directory=True)
    with pytest.raises(TritpackError, match="symlink"):
        lm.import_to_lmstudio(model, publisher="pub", name="n", models_dir=models)
    assert list(outside.iterdir()) == []


def test_symlink_race_is_caught_by_nofollow(tmp_path, model, monkeypatch):
    """A symlink that appears after the checks is still not followed (O_NOFOLLOW on the open)."""
    models = tmp_path / "models"
    (models / "pub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    real = lm._open_dir_nofollow

    def swap_then_open(parent_fd, name, **kw):  # the swap lands after every path-based check
        if name == "n":
            (models / "pub" / "n").symlink_to(outside, target_is_directory=True)
        return real(parent_fd, name, **kw)

    monkeypatch.setattr(lm, "_open_dir_nofollow", swap_then_open)
    with pytest.raises(TritpackError, match="symlink"):
        lm.import_to_lmstudio(model, publisher="pub", name="n", models_dir=models)
    assert list(outside.iterdir()) == []


def test_models_root_may_itself_be_a_symlink(tmp_path, model):
    """Users point the models folder at another disk with a symlink: that is followed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "models").symlink_to(disk, target_is_directory=True)
    r = lm.import_to_lmstudio(model, publisher="p", name="n", models_dir=tmp_path / "models")
    assert (disk / "p" / "n" / model.name).is_file() and Path(r["destination"]).is_file()


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "/abs", "a\\b", "x\x00y", "x\ny", "bell\x07", ".hidden", "", " ",
                                 "a..b", "what?"])
@pytest.mark.parametrize("field", ["publisher", "name"])
def test_hostile_names_refused(tmp_path, model, bad, field):
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(TritpackError, match=f"invalid LM Studio {field}"):
        lm.import_to_lmstudio(model, models_dir=models, **{field: bad})
    assert list(models.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------

def test_cli_import(tmp_path, model, monkeypatch):
    models = tmp_path / "models"
    runner = CliRunner()
    res = runner.invoke(lm_cli.app, ["import", str(model), "--models-dir", str(models), "--publisher", "p",
                                     "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would copy" in res.stdout and not models.exists()
    res = runner.invoke(lm_cli.app, ["import", str(model), "--models-dir", str(models), "--publisher", "p",
                                     "--symlink", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["mode"] == "symlink" and Path(doc["destination"]).is_symlink()
    res = runner.invoke(lm_cli.app, ["import", str(model), "--models-dir", str(models), "--copy", "--move"])
    assert isinstance(res.exception, TritpackError) and "choose one" in str(res.exception)
    # auto with a TritPack file says it imports a stock export
    src = write_gguf(tmp_path / "packed.gguf", "tp1")
    exp = FakeExporter()
    monkeypatch.setattr(lm, "default_exporter", lambda: exp)
    monkeypatch.setenv(lm.ENV_MODELS_DIR, str(models))
    res = runner.invoke(lm_cli.app, ["import", str(src), "--name", "packed"])
    assert res.exit_code == 0, res.output
    assert "Q4_0" in res.output and res.stdout.strip().endswith("packed.Q4_0.gguf") and len(exp.calls) == 1
