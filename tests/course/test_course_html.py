"""``python -m tutorial_lib.course html``: every notebook executed at ``$TUTORIAL_PROFILE`` (default
small) and rendered, then every page opened in headless Chromium (Debian's ``chromium``, which
``scripts/test.sh`` installs), driven over the DevTools protocol through a pipe: the page shows its
notebook, every figure loads, and nothing fails or is fetched from outside."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import json
import os
import queue
import re
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest

from tutorial_lib.course.html import render_html
from tutorial_lib.course.student import CourseError, select_notebooks

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--mute-audio", "--remote-debugging-pipe"]
INSTALL_HINT = ("sudo apt-get install --no-install-recommends chromium "
                "(scripts/test.sh installs it when /usr/bin/chromium is missing)")
PAGE_TIMEOUT = 60.0  # seconds for one page to load

# what a page shows once loaded: its text, its images (after each has loaded or failed), its links
PAGE_STATE = """(async () => {
  await Promise.all([...document.images].map(i => i.complete ? null
    : new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  return JSON.stringify({
    title: document.title,
    text: document.body ? document.body.innerText : '',
    images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth, src: i.src.slice(0, 40), alt: i.alt})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
  });
})()"""


def _chromium() -> str:
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"headless Chromium not found at {CHROMIUM}; install it with {INSTALL_HINT}"
    if os.environ.get("CI") or os.environ.get("TUTORIAL_REQUIRE_BROWSER"):
        pytest.fail(message + " (in CI and in scripts/test.sh the browser check must run)", pytrace=False)
    pytest.skip(message)


class Browser:
    """Headless Chromium over ``--remote-debugging-pipe``: commands go in on fd 3, replies and events
    come out on fd 4, each a JSON message ended by a NUL byte."""

    def __init__(self, executable: str, profile_dir: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # in the child: our pipes become its fds 3 and 4
            r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.log_path = profile_dir / "chromium.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir / 'user-data'}", "about:blank"],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=wire_fds, pass_fds=(3, 4))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._messages: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        try:
            self.version = self.send("Browser.getVersion", timeout=60)["product"]
        except Exception:
            self.close()
            raise

    def _read(self):
        buffer = b""
        with contextlib.suppress(OSError):  # our end closed while the browser hung
            while chunk := os.read(self._from_browser, 1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for m in messages:
                    self._messages.put(json.loads(m))
        self._messages.put(None)  # the browser closed its end

    def _pump(self, deadline: float) -> bool:
        try:
            message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if message is None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Chromium exited (code {self.proc.poll()}); its log ends:\n{tail}")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self.events.append(message)
        return True

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self._next_id += 1
        request = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            request["sessionId"] = session
        os.write(self._to_browser, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while self._next_id not in self._replies:
            if not self._pump(deadline):
                raise TimeoutError(f"Chromium did not answer {method} within {timeout:.0f} s")
        reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def wait_for(self, method: str, session: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method and e.get("sessionId") == session for e in self.events):
            if not self._pump(deadline):
                return False
        return True

    def settle(self, seconds: float):
        deadline = time.monotonic() + seconds
        while self._pump(deadline):
            pass

    def open(self, url: str, allowed_prefix: str) -> dict:
        """Load ``url`` in a fresh tab; return what it shows and everything that went wrong."""
        try:
            return self._open(url, allowed_prefix)
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"{url}: {err}") from err

    def _open(self, url: str, allowed_prefix: str) -> dict:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable", session=session)
            problems = []
            navigation = self.send("Page.navigate", {"url": url}, session)
            if navigation.get("errorText"):
                problems.append(f"navigation failed: {navigation['errorText']}")
            elif not self.wait_for("Page.loadEventFired", session, PAGE_TIMEOUT):
                problems.append(f"no load event within {PAGE_TIMEOUT:.0f} s")
            self.settle(0.5)  # late errors
            state = self.send("Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True, "awaitPromise": True},
                              session, timeout=PAGE_TIMEOUT)
            if "exceptionDetails" in state:
                problems.append(f"the check itself failed: {state['exceptionDetails']}")
                shown = {"title": "", "text": "", "images": [], "links": []}
            else:
                shown = json.loads(state["result"]["value"])
            self.settle(0.2)
            problems += self._problems(session, allowed_prefix)
            shown["problems"] = problems
            return shown
        finally:
            with contextlib.suppress(RuntimeError, TimeoutError):
                self.send("Target.closeTarget", {"targetId": target})

    def _problems(self, session: str, allowed_prefix: str) -> list[str]:
        found, urls = [], {}
        for event in (e for e in self.events if e.get("sessionId") == session):
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                urls[params["requestId"]] = url
                if not url.startswith((allowed_prefix, "data:", "about:")):
                    found.append(f"request outside the page's folder: {url}")
            elif method == "Network.loadingFailed":
                found.append(f"failed to load {urls.get(params['requestId'], params['requestId'])}: {params.get('errorText')}")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                found.append(f"HTTP {params['response']['status']} for {params['response']['url']}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"JavaScript exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append("console error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"console error ({params['entry']['source']}): {params['entry']['text']} {params['entry'].get('url', '')}".strip())
        return found

    def close(self):
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        self._reader.join(timeout=5)
        os.close(self._from_browser)


@contextlib.contextmanager
def serve(folder: Path):
    """``folder`` over HTTP on 127.0.0.1, on a free port; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@contextlib.contextmanager
def browser(executable: str):
    with tempfile.TemporaryDirectory(prefix="course-chromium-") as tmp:  # a new, empty profile per run
        b = Browser(executable, Path(tmp))
        try:
            yield b
        finally:
            b.close()


def open_pages(folder: Path, names: list[str]) -> dict[str, dict]:
    """Open ``folder/NAME`` for each name in one browser; what each page showed and its problems."""
    executable = _chromium()
    with serve(folder) as base, browser(executable) as b:
        return {name: b.open(base + name, base) for name in names}


def _plain(text: str) -> str:
    return " ".join(text.split())


def expected_text(nb) -> tuple[str, str, str | None]:
    """What a page must show: the notebook's title, a run of five plain words from its prose, and the
    first line the notebook printed (``None`` when it printed nothing)."""
    title = re.sub(r"[`*_]", "", nb.cells[0].source.splitlines()[0].lstrip("#").strip())
    prose = next(m.group(0) for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()[1:]
                 if not line.lstrip().startswith("#") and (m := re.search(r"(?<![\w`$\\])(?:[A-Za-z]{2,} ){4}[A-Za-z]{2,}(?![\w`$])", line)))
    printed = next((line.strip() for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if o.get("output_type") == "stream" and o.get("name") == "stdout" for line in o["text"].splitlines() if line.strip()), None)
    return title, prose, printed


# ---------------------------------------------------------------- the whole course

NOTEBOOKS = [p.stem for p in select_notebooks()]


@pytest.fixture(scope="module")
def course_site(tmp_path_factory):
    _chromium()  # before the long render: a missing browser fails (CI) or skips at once
    out = tmp_path_factory.mktemp("course_html")
    profile = os.environ.get("TUTORIAL_PROFILE") or "small"
    start = time.perf_counter()
    executed = os.environ.get("TUTORIAL_EXECUTED_DIR")
    if executed and all((Path(executed) / f"{name}.ipynb").is_file() for name in NOTEBOOKS):
        # scripts/test.sh: the notebooks nbval just ran (notebooks/conftest.py wrote them with their outputs)
        pages = render_html(out, profile, execute=False, directory=executed, log=lambda line: print(line, flush=True))
        assert all(any(c.get("outputs") for c in p.notebook.cells if c.cell_type == "code") for p in pages)
    else:
        pages = render_html(out, profile, log=lambda line: print(line, flush=True))
    rendered = time.perf_counter() - start
    start = time.perf_counter()
    shown = open_pages(out, [p.path.name for p in pages] + ["index.html", "glossary.html"])
    print(f"rendered {len(pages)} notebooks at profile {profile!r} in {rendered:.0f} s; "
          f"opened {len(shown)} pages in Chromium in {time.perf_counter() - start:.1f} s")
    return out, {p.name: p for p in pages}, shown


def _problems(page: str, shown: dict) -> str:
    return f"{page}: " + "; ".join(shown["problems"])


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_page_shows_its_executed_notebook(course_site, name):
    out, pages, shown = course_site
    page = pages[name]
    html_name = page.path.name
    got = shown[html_name]
    assert not got["problems"], _problems(html_name, got)
    text = _plain(got["text"])
    title, prose, printed = expected_text(page.notebook)
    assert title in text and got["title"] == title, f"{html_name}: title {title!r} not shown (page title {got['title']!r})"
    assert prose in text, f"{html_name}: the notebook's text {prose!r} is not on the page"
    assert printed is not None, f"{html_name}: the executed notebook printed nothing (was it executed?)"
    assert _plain(printed) in text, f"{html_name}: the output line {printed!r} is not on the page"
    plots = re.search(r"\bplot_\w+\(|\bplt\.|\.plot\(", "\n".join(c.source for c in page.notebook.cells if c.cell_type == "code"))
    assert page.n_images or not plots, f"{html_name}: the notebook plots ({plots.group(0)!r}) but its executed copy has no figure"
    broken = [i["src"] for i in got["images"] if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"{html_name}: {len(broken)} image(s) did not load: {broken}"
    assert len(got["images"]) == page.n_images, (f"{html_name}: {len(got['images'])} <img> on the page, "
                                                 f"{page.n_images} image outputs in the executed notebook")
    untitled = [i["alt"] for i in got["images"] if not i["alt"].startswith("Figure: ")]
    assert not untitled, f"{html_name}: {len(untitled)} figure(s) without a title: {untitled}"
    local = [h for h in got["links"] if not h.startswith(("#", "data:", "http:", "https:", "mailto:"))]
    missing = [h for h in local if not (out / h.split("#")[0]).is_file()]
    assert not missing, f"{html_name}: links to missing files {missing}"


def test_index_lists_every_page(course_site):
    out, pages, shown = course_site
    got = shown["index.html"]
    assert not got["problems"], _problems("index.html", got)
    text = _plain(got["text"])
    for page in pages.values():
        assert page.path.name in got["links"], f"index.html: no link to {page.path.name}"
        assert page.title in text, f"index.html: the title {page.title!r} of {page.path.name} is not listed"
    assert sorted(p.name for p in out.glob("*.html")) == sorted([p.path.name for p in pages.values()] + ["index.html", "glossary.html"])
    assert "glossary.html" in got["links"]


def test_the_glossary_has_its_page(course_site):
    """Every notebook links the glossary; on the pages that link leads to the rendered glossary."""
    out, pages, shown = course_site
    got = shown["glossary.html"]
    assert not got["problems"], _problems("glossary.html", got)
    text = _plain(got["text"])
    assert text.startswith("The course Glossary") and "Fisher Removal" in text and "PrivLeak" in text
    assert all("glossary.html" in shown[p.path.name]["links"] for p in pages.values())


# ---------------------------------------------------------------- small notebooks, known content

def _write(folder: Path, name: str, cells: list) -> None:
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, folder / name)


def test_kernel_widgets_and_failing_cell(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    new_md, new_code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    _write(src, "00_env.ipynb", [
        new_md("# Environment `check`\n\nThe kernel prints where it runs and draws two figures. See [the next](01_fails.ipynb)."),
        new_code("import os, sys\nprint('exe', sys.executable)\nprint('cwd', os.getcwd())\nprint('profile', os.environ['TUTORIAL_PROFILE'])"),
        new_code("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]);"),
        new_code("import ipywidgets as widgets\ndef show(k=1):\n    plt.plot([0, k]); plt.show()\n"
                 "widgets.interact(show, k=(1, 3));\nwidgets.interact_manual(show, k=(1, 3));"),
    ])
    _write(src, "01_fails.ipynb", [new_md("# Fails"), new_code("x = 1"), new_code("1 / 0  # the third cell")])
    out = tmp_path / "site"
    with pytest.raises(CourseError, match=r"01_fails\.ipynb: cell 2 \('1 / 0  # the third cell'\) failed: ZeroDivisionError"):
        render_html(out, "tiny", directory=src, timeout=120, log=lambda _: None)
    pages = render_html(out, "tiny", names=["00"], directory=src, timeout=120, log=lambda _: None)
    nb = pages[0].notebook
    printed = "".join(o["text"] for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "stream")
    import sys

    assert f"exe {sys.executable}\n" in printed and f"cwd {src}\n" in printed and "profile tiny\n" in printed
    assert pages[0].title == "Environment check" and pages[0].n_images == 2  # the plot, the interact's first call
    assert "widgets" not in nb.metadata
    html = pages[0].path.read_text()
    assert html.count("run the notebook to use them") == 2 and 'href="01_fails.html"' not in html  # 01 not rendered
    shown = open_pages(out, ["00_env.html", "index.html"])
    got = shown["00_env.html"]
    assert not got["problems"], _problems("00_env.html", got)
    assert len(got["images"]) == 2 and all(i["complete"] and i["width"] > 0 for i in got["images"])
    assert "Environment check" in got["text"] and "profile tiny" in got["text"]
    assert not shown["index.html"]["problems"] and "00_env.html" in shown["index.html"]["links"]


def test_figures_inline_with_their_titles_whatever_the_backend(tmp_path):
    """setup_notebook draws inline even when matplotlib was set to Agg, and each figure's text (the
    page's image description) names its titles, or says it has none."""
    new_md, new_code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    _write(tmp_path, "00_titles.ipynb", [
        new_md("# Titles"),
        new_code("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nimport tutorial_lib as tl\n"
                 "setup = tl.setup_notebook(quiet=True)"),
        new_code("fig, (a, b) = plt.subplots(1, 2)\na.set_title('left panel')\nfig.suptitle('two panels')\nplt.show()"),
        new_code("plt.plot([0, 1]);"),
    ])
    (page,) = render_html(tmp_path / "site", "tiny", directory=tmp_path, timeout=300, log=lambda _: None)
    texts = [o["data"]["text/plain"] for c in page.notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert texts == ["Figure: two panels | left panel", "Figure without a title (1 panel)"]
    got = open_pages(tmp_path / "site", ["00_titles.html"])["00_titles.html"]
    assert not got["problems"], _problems("00_titles.html", got)
    assert [i["alt"] for i in got["images"]] == texts


def test_browser_check_catches_failures(tmp_path):
    """The check itself: a missing image, a script error, a request outside the folder are reported."""
    with socket.socket() as s:  # a port nothing listens on: the request fails at once
        s.bind(("127.0.0.1", 0))
        elsewhere = f"http://127.0.0.1:{s.getsockname()[1]}/x.js"
    (tmp_path / "bad.html").write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>bad</title></head><body><p>text</p>'
        f'<img src="missing.png"><script>undefined_function();</script><script src="{elsewhere}"></script>'
        '<script>console.error("logged error")</script></body></html>')
    got = open_pages(tmp_path, ["bad.html"])["bad.html"]
    problems = " | ".join(got["problems"])
    assert "HTTP 404" in problems and "missing.png" in problems
    assert "undefined_function" in problems and "logged error" in problems
    assert f"request outside the page's folder: {elsewhere}" in problems and f"failed to load {elsewhere}" in problems
    assert got["images"] and not got["images"][0]["width"]
