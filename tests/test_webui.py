"""The chat page (llama.cpp's web UI) that `serve` brings up, driven in a real headless Chromium.

The page is built from the pinned tree's tools/ui with npm by `tritpack-gguf build` and embedded in
llama-server. The browser is Debian's chromium with its chromedriver (`make browser` installs them);
where neither is installed the browser tests skip and say why. The screenshots go to
$TRITPACK_WEBUI_SHOTS (default: the test's tmp folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q, GGUFValueType

from tritpack_gguf import build as B
from tritpack_gguf.convert import ConvertOptions, convert
from tritpack_gguf.converters.reader import GGUFFile
from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file
from tritpack_gguf.converters.writer import rewrite_tensors

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1100,800"]
# a template no built-in one matches: the prompt the server builds shows that the model's own was used
TEMPLATE = ("{% for m in messages %}[[{{ m['role'] }}]] {{ m['content'] }} [[/{{ m['role'] }}]]\n{% endfor %}"
            "{% if add_generation_prompt %}[[assistant]] {% endif %}")
ENTRY = """
import sys
from tritpack_gguf import cli
from tritpack_gguf.cli import serve
if "serve" not in {c.name for c in cli.app.registered_commands}:
    cli.app.command("serve")(serve.serve_command)
sys.exit(cli.main(sys.argv[1:]))
"""


# ----------------------------------------------------------------------------- the page's build

def test_ui_key_follows_the_page_sources_only(tmp_path, patched_build):
    ui = tmp_path / "ui"
    shutil.copytree(Path(patched_build.source_dir) / "tools" / "ui", ui,
                    ignore=shutil.ignore_patterns(*B.UI_SKIP_DIRS))
    key = B.ui_key(ui)
    assert key == patched_build.ui_key or not patched_build.ui
    (ui / "node_modules").mkdir()
    (ui / "node_modules" / "x.js").write_text("npm's output is not a source")
    (ui / "dist").mkdir()
    (ui / "dist" / "index.html").write_text("<html>")
    assert B.ui_key(ui) == key                       # what npm and a build leave there is not a source
    lock = ui / "package-lock.json"
    lock.write_text(lock.read_text().replace('"lockfileVersion"', '"lockfileVersion" ', 1))
    assert B.ui_key(ui) != key
    lock.write_text(lock.read_text().replace('"lockfileVersion" ', '"lockfileVersion"', 1))
    (ui / "src" / "app.html").write_text((ui / "src" / "app.html").read_text() + "\n")
    assert B.ui_key(ui) != key


def test_without_node_the_build_goes_on_without_the_page(tmp_path, monkeypatch, patched_build):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    page = B.build_ui(Path(patched_build.source_dir), tmp_path / "home")
    assert page.dist is None and page.note == "node is not on PATH"
    assert not (tmp_path / "home" / "ui").exists()   # nothing half-made in the cache


def test_the_page_is_built_once_and_then_found_without_npm(patched_build, monkeypatch, tmp_path):
    if not patched_build.ui:
        pytest.skip(f"this build has no chat page: {patched_build.ui_note}")
    assert (Path(patched_build.ui) / "index.html").is_file()
    # a second build finds it by content: with no node or npm on PATH it is still there, unbuilt
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    from tritpack_gguf.paths import tritpack_home

    page = B.build_ui(Path(patched_build.source_dir), tritpack_home())
    assert page.dist == Path(patched_build.ui) and not page.built_now
    assert page.key.startswith(Path(patched_build.ui).parent.name)
    monkeypatch.undo()
    from tritpack_gguf.cli.doctor import diagnose

    report = diagnose()["chat_page"]
    assert report["embedded"] is True and report["key"] == page.key[:16] and report["npm"]


# ----------------------------------------------------------------------------- models

def _chat_model(src: Path, dst: Path, seed: int) -> Path:
    """`src` with a chat template of its own and a readout that walks a permutation of the ordinary
    tokens (the logit of perm[i] is <e_i, h>, the layers halved so that h stays near the current
    token's embedding; see clear_margins in test_runtime.py): the reply is long and never reaches the
    end-of-text token, which the permutation leaves in place, so it runs until the page stops it."""
    f = GGUFFile(src)
    n_special = 3   # <unk> <s> </s> of the llama-spm vocabulary

    def tensor(t, raw: np.ndarray) -> np.ndarray:
        dt = {Q.F16: np.float16, Q.F32: np.float32}[t.type]
        a = np.frombuffer(raw.tobytes(), dtype=dt).reshape(t.shape)
        if t.name == "output.weight":
            e = np.frombuffer(f.raw(f.tensor("token_embd.weight")).tobytes(), dtype=dt).reshape(t.shape)
            perm = np.arange(e.shape[0])
            perm[n_special:] = n_special + np.random.default_rng(seed).permutation(e.shape[0] - n_special)
            a = np.empty_like(e)
            a[perm] = e
        elif t.name.startswith("blk.") and len(t.shape) == 2:
            a = (a.astype(np.float32) * 0.5).astype(dt)
        return a

    return rewrite_tensors(src, dst, tensor, skip={"tokenizer.chat_template"},
                           extra=(("tokenizer.chat_template", TEMPLATE, GGUFValueType.STRING),))


@pytest.fixture(scope="module")
def models(tmp_path_factory, patched_build):
    """A TP1 and a TP4 model with a chat template of their own, room for a long reply (16384 tokens)
    and no end-of-text in it: the stop button has something to stop."""
    d = tmp_path_factory.mktemp("webui")
    vocab = vocab_file(patched_build.source_dir)
    out = {}
    for kind, ternary, seed in (("tp1", True, 11), ("tp4", False, 12)):
        raw = make_llama(d / f"raw-{kind}.gguf", vocab, Shape(n_embd=256, n_ff=640, n_layer=4, n_ctx=16384), seed=seed, ternary=ternary, dtype=Q.F16)
        src = _chat_model(raw, d / f"chat-{kind}.gguf", seed)
        raw.unlink()
        out[kind] = Path(convert(src, ConvertOptions(type=kind, output=d / f"chat-{kind.upper()}.gguf",
                                                     threads=1)).output)
    return out


class Serve:
    """`tritpack-gguf serve` as a user runs it, in a child process, its stderr collected."""

    def __init__(self, model: Path, *args: str, env: dict | None = None):
        from tritpack_gguf.serve import free_port

        self.port = free_port()
        self.p = subprocess.Popen([sys.executable, "-c", ENTRY, "serve", str(model), "--port", str(self.port),
                                   "-t", "1", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.p.stderr), daemon=True)
        self.reader.start()
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        t_end = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if text in line:
                    return line
            assert self.p.poll() is None and time.monotonic() < t_end, f"no {text!r} in:\n{self.err[-3000:]}"
            time.sleep(0.1)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.reader.join(timeout=10)


def test_no_ui_turns_the_page_off(models, patched_build):
    import httpx

    from tritpack_gguf.serve import chat_page

    s = Serve(models["tp4"], "--no-ui")
    try:
        s.wait_for("serving chat-TP4.gguf at")
        assert not chat_page(s.url) and httpx.get(s.url + "/", timeout=10).status_code == 404
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
    finally:
        s.close()
    assert "chat page" not in s.err, s.err


def test_a_build_without_the_page_says_in_one_line_how_to_get_it(models, patched_build, tmp_path, monkeypatch):
    """A build made where npm was missing: its stamp has no page and its llama-server serves none
    (here the real programs, linked into a folder whose stamp says so, and told --no-ui behind serve's back)."""
    import json

    fake = tmp_path / "build"
    (fake / "bin").mkdir(parents=True)
    for f in Path(patched_build.lib_dir).iterdir():
        (fake / "bin" / f.name).symlink_to(f)
    stamp = json.loads((Path(patched_build.build_dir) / B.STAMP).read_text())
    stamp.update(ui=None, ui_key=None, ui_note="npm is not on PATH")
    (fake / B.STAMP).write_text(json.dumps(stamp))
    from tritpack_gguf.cli.doctor import diagnose

    with monkeypatch.context() as m:
        m.setenv("TRITPACK_LIB_DIR", str(fake / "bin"))
        report = diagnose()
    assert report["chat_page"]["embedded"] is False and report["chat_page"]["note"] == "npm is not on PATH"
    assert f"llama-server has no chat page (npm is not on PATH): {B.UI_HOW}" in report["notes"]
    s = Serve(models["tp4"], "--", "--no-ui", env={"TRITPACK_LIB_DIR": str(fake / "bin")})
    try:
        s.wait_for("serving chat-TP4.gguf at")
        line = s.wait_for("chat page")
    finally:
        s.close()
    assert line.strip() == f"no chat page in this build of llama-server: {B.UI_HOW}"
    assert [x for x in s.lines if "chat page" in x] == [line]
    # with the page built in, serve says nothing about it when llama-server was told --no-ui directly
    s = Serve(models["tp4"], "--", "--no-ui")
    try:
        s.wait_for("serving chat-TP4.gguf at")
    finally:
        s.close()
    assert "chat page" not in s.err, s.err


# ----------------------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def browser_driver():
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"no {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium, chromium-driver): `make browser` "
                    "installs them where apt-get can")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the [test] extra")
    from selenium.webdriver.chrome.service import Service

    def start(profile: Path):
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
            opts.add_argument(flag)
        return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)

    return start


def _shots(tmp_path: Path) -> Path:
    d = Path(os.environ.get("TRITPACK_WEBUI_SHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.mark.parametrize("kind", ["tp1", "tp4"])
def test_the_page_chats_streams_and_stops_on_a_tritpack_model(kind, models, patched_build, browser_driver,
                                                              tmp_path, count_line):
    import httpx
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    if not patched_build.ui:
        pytest.skip(f"this build has no chat page: {patched_build.ui_note}")
    name = f"chat-{kind.upper()}"
    s = Serve(models[kind], "--ctx", "16384", env={"LLAMA_SERVER_SLOTS_DEBUG": "1"})   # /slots: the prompt built
    driver = None
    try:
        line = s.wait_for("chat page: open ")
        assert line.strip() == f"chat page: open {s.url}/ in a browser"
        driver = browser_driver(tmp_path / "profile")
        driver.set_page_load_timeout(60)
        wait = WebDriverWait(driver, 60, poll_frequency=0.1)
        driver.get(s.url + "/")
        box = wait.until(lambda d: next((e for e in d.find_elements(By.TAG_NAME, "textarea") if e.is_displayed()), None))
        wait.until(lambda d: name in d.find_element(By.TAG_NAME, "body").text)   # the model's name is shown

        box.send_keys("Tell me a long story about ternary weights.")
        box.send_keys(Keys.ENTER)
        state = """const r = document.querySelector('[aria-label="Assistant message with actions"]');
                   const stop = [...document.querySelectorAll('button')].some(b => b.textContent.trim() === 'Stop');
                   const info = r && r.querySelector('.info');   // the model and statistics line under it
                   return [r ? r.innerText.length - (info ? info.innerText.length : 0) : 0, stop];"""
        # a streamed reply: its text is on the page and grows while the stop button is still up
        first = wait.until(lambda d: (lambda n, up: n if n and up else None)(*d.execute_script(state)))
        wait.until(lambda d: (lambda n, up: up and n > first)(*d.execute_script(state)))
        # a mouse click where the stop button is (it is re-rendered with every token, so an element
        # handle goes stale before it can be clicked)
        x, y = driver.execute_script("""const b = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Stop');
                                        const r = b.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];""")
        click = ActionBuilder(driver)
        click.pointer_action.move_to_location(int(x), int(y)).click()
        click.perform()
        wait.until(lambda d: not d.execute_script(state)[1])
        stopped = driver.execute_script(state)[0]
        time.sleep(1.0)
        assert driver.execute_script(state)[0] == stopped   # nothing more arrives
        driver.save_screenshot(str(_shots(tmp_path) / f"webui-{kind}.png"))

        slots = httpx.get(s.url + "/slots", timeout=10).json()
        assert not any(x["is_processing"] for x in slots), slots
        used = [x for x in slots if "next_token" in x]
        assert len(used) == 1, slots
        slot = used[0]
        # the slot after the stop: the prompt and what was streamed, cut off (a reply that ended by
        # itself, at an end-of-text or a full context, has no next token)
        prompt = httpx.post(s.url + "/tokenize", json={"content": slot["prompt"], "parse_special": True}, timeout=10)
        decoded = slot["n_prompt_tokens"] - len(prompt.json()["tokens"])
        assert 0 < decoded < slot["n_ctx"] and slot["next_token"][0]["has_next_token"], json.dumps(slots)[:3000]
        # the model's own chat template made the prompt
        assert "[[user]] Tell me a long story about ternary weights. [[/user]]" in slot["prompt"], slot["prompt"]
        assert slot["prompt"].rstrip().endswith("[[assistant]]"), slot["prompt"]
        count_line(f"webui {kind}: the page streamed {decoded} tokens before its stop button stopped them")
    finally:
        if driver is not None:
            driver.quit()
        s.close()
