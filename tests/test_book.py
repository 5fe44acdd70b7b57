"""The course as a website: the executed copies, the book's sources, and the built site in a real browser.

The browser tests build the book from the committed executed notebooks (``figures/executed/``), serve it on the
loopback address and open every page in Debian's headless Chromium through Selenium. ``make test`` installs
Chromium first; without it they fail and say how to install it (``TSBD_BROWSER_TESTS=off`` skips them, with that
reason in the summary). Screenshots go to ``runs/test-artifacts/book/`` (``TSBD_TEST_ARTIFACTS`` moves them).
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import nbformat
import pytest

from tsbd_utils import book, paths

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = paths.notebooks(ROOT / "notebooks")
PNG = base64.b64encode(b"\x89PNG /not/a/path/tmp/run").decode()  # an image's bytes are never rewritten


def _executed(folder: Path, *, profile="quick", misses=3, duration=12.3, error=False) -> Path:
    run, cache, figures = folder / "run", folder / "cache", folder / "figures"
    nb = nbformat.v4.new_notebook()
    output = nbformat.v4.new_output("stream", text=f"cache {cache}\nfigures {figures}/00_x.png\nhome {Path.home()}/x\n")
    image = nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": f"<{run}>"})
    bar = nbformat.v4.new_output("display_data", data={book.WIDGET: {"model_id": "x"}, "text/plain": "epoch 1: 0%"})
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 00 · A title"),
        nbformat.v4.new_code_cell('PROFILE = "quick"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f'CACHE_DIR = "{cache}"', metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print(S.describe())", outputs=[output, bar, image],
                                  metadata={"execution": {"shell.execute_reply": "now"}, "papermill": {"duration": 1}}),
        nbformat.v4.new_markdown_cell("## What to take away\n\n* one thing"),
    ]
    if error:
        nb.cells[3].outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[]))
    nb.metadata["widgets"] = {"state": {}}
    nb.metadata["papermill"] = {"duration": duration, "parameters": {
        "PROFILE": profile, "CACHE_DIR": str(cache), "FIGURES_DIR": str(figures), "RUN_DIR": str(run)}}
    run.mkdir(parents=True, exist_ok=True)
    path = run / "00_overview.ipynb"
    nbformat.write(nb, path)
    (run / "00_results.json").write_text(json.dumps({
        "cache": {"hits": 0, "misses": misses}, "seconds": duration,
        "provenance": {"threads": 2, "device_name": "x86_64", "device": "cpu"}}))
    return path


def test_export_gives_the_runs_folders_their_project_names_and_keeps_both_run_times(tmp_path):
    dest = tmp_path / "executed"
    copy = book.export(_executed(tmp_path), dest, root=tmp_path)
    nb = nbformat.read(copy, as_version=4)
    text = nb.cells[2].outputs[0].text
    assert "cache .cache\n" in text and "figures figures/00_x.png" in text and "home ~/x" in text
    shown = nb.cells[2].outputs[1].data
    assert shown["image/png"] == PNG and shown["text/plain"] == "<runs/quick>"
    assert [c.metadata.get("tags", []) for c in nb.cells] == [[], ["parameters"], [], []]  # no injected cell
    assert "execution" not in nb.cells[2].metadata and not {"papermill", "widgets"} & set(nb.metadata)
    assert len(nb.cells[2].outputs) == 2  # the progress bar is gone
    assert str(tmp_path) not in copy.read_text()
    run = nb.metadata["tsbd_run"]
    assert run["computed"] == {"seconds": 12.3, "new_results": 3} and "cached" not in run and run["threads"] == 2
    # A later run that read everything from the cache keeps the time of the run that computed.
    book.export(_executed(tmp_path, misses=0, duration=2.0), dest, root=tmp_path)
    run = nbformat.read(copy, as_version=4).metadata["tsbd_run"]
    assert run["computed"]["seconds"] == 12.3 and run["cached"] == {"seconds": 2.0, "new_results": 0}
    note = book.run_note(nbformat.read(copy, as_version=4), "00_overview.ipynb")
    assert "**12 s**" in note and "**2 s**" in note and "downloads/00_overview.ipynb" in note


def test_export_refuses_a_run_the_book_must_not_show(tmp_path):
    with pytest.raises(ValueError, match="profile 'smoke'; the book shows 'quick' runs only"):
        book.export(_executed(tmp_path / "a", profile="smoke"), tmp_path / "out")
    with pytest.raises(ValueError, match="error output"):
        book.export(_executed(tmp_path / "b", error=True), tmp_path / "out")


def test_export_is_all_or_nothing_and_its_command_line_checks_its_folders(tmp_path, capsys):
    good = _executed(tmp_path / "run")
    smoke = _executed(tmp_path / "other", profile="smoke")
    smoke.rename(good.parent / "01_smoke.ipynb")
    (tmp_path / "other" / "run" / "00_results.json").rename(good.parent / "01_results.json")
    dest = tmp_path / "executed"
    with pytest.raises(ValueError, match="01_smoke.ipynb ran in profile 'smoke'"):
        book.export_run(good.parent, dest, root=tmp_path)
    assert not dest.exists()  # the good notebook before it was not written either
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    for argv, message in ((["export", str(tmp_path / "missing")], "is not a folder of executed notebooks"),
                          (["export", str(tmp_path / "empty"), "--dest", str(dest)], "holds no executed notebook"),
                          (["export", str(good.parent), "--dest", ""], "--dest must be a folder path"),
                          (["export", str(good.parent), "--dest", str(tmp_path / "a-file")], "a-file is a file"),
                          (["build", "--out", ""], "--out must be a folder path"),
                          (["build", "--out", str(tmp_path / "a-file")], "a-file is a file")):
        assert book.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not dest.exists()


def test_the_books_sources_hold_every_notebook_in_order_with_its_run_and_the_landing_page(tmp_path):
    src = book.assemble(tmp_path / "src", ROOT)
    toc = (src / "_toc.yml").read_text()
    files = [line.split("file: ")[1] for line in toc.splitlines() if "file: " in line]
    assert files == [p.stem for p in NOTEBOOKS] + ["references"]
    intro = (src / "intro.md").read_text()
    table = [line for line in (ROOT / book.TABLE).read_text().splitlines() if line.startswith("| BadNets")]
    assert table and table[0] in intro and "{{" not in intro
    for path in NOTEBOOKS:
        chapter = nbformat.read(src / path.name, as_version=4)
        assert f"]({path.name})" in intro  # the landing page links each notebook's take-aways to its chapter
        note = chapter.cells[1].source
        assert note.startswith("```{admonition} Run it yourself") and ("min**" in note or " s**" in note), path.name
        download = nbformat.read(src / "downloads" / path.name, as_version=4)
        assert not any(c.get("outputs") for c in download.cells)  # the notebook a reader runs, without outputs
    assert "@inproceedings{lin2024tsbd" in (src / "references.bib").read_text()


def test_a_notebook_changed_since_its_last_run_stops_the_book(tmp_path):
    root = tmp_path / "project"
    for folder in ("notebooks", "figures"):
        shutil.copytree(ROOT / folder, root / folder)
    changed = root / "notebooks" / NOTEBOOKS[0].name
    nb = nbformat.read(changed, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    code.source += "\nprint('changed')"
    nbformat.write(nb, changed)
    with pytest.raises(ValueError, match=f"{NOTEBOOKS[0].name} has changed since its last quick run"):
        book.assemble(tmp_path / "src", root)


# ---------------------------------------------------------------------------------------------- in a browser

# Every image eager and decoded (the theme may lazy-load), then what a reader would see: broken images,
# error outputs, raw tracebacks.
PAGE_PROBLEMS = """
const done = arguments[arguments.length - 1];
const images = [...document.images];
images.forEach(i => { i.loading = 'eager'; });
Promise.all(images.map(i => i.decode().catch(() => null))).then(() => {
  const problems = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => 'broken image ' + i.src);
  document.querySelectorAll('.output.traceback, .output.error, .traceback').forEach(
    e => problems.push('error output: ' + e.innerText.slice(0, 80)));
  if (document.body.innerText.includes('Traceback (most recent call last)')) problems.push('raw traceback');
  done({problems: problems, images: images.length, figures: document.querySelectorAll('.cell_output img').length});
});
"""


def _browser_binaries() -> tuple[str, str]:
    if os.environ.get("TSBD_BROWSER_TESTS") == "off":
        pytest.skip("TSBD_BROWSER_TESTS=off: the book's browser tests were switched off")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("Debian's chromium and chromium-driver are needed (make test installs them as root or with "
                    "sudo: sudo apt-get install chromium chromium-driver); TSBD_BROWSER_TESTS=off skips these tests")
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    flags = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800")
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _browser_binaries()  # no build when the browser is missing
    html = book.build(tmp_path_factory.mktemp("book"), ROOT)
    yield from _serve(html)


def _serve(folder: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the test's output, not the server's
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def _artifacts() -> Path:
    folder = Path(os.environ.get("TSBD_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts")) / "book"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_page_check_catches_a_broken_image_and_a_traceback(browser, tmp_path):
    (tmp_path / "index.html").write_text(
        '<html><body><img src="missing.png"><div class="cell_output"><div class="output traceback">'
        "ValueError</div></div><pre>Traceback (most recent call last):</pre></body></html>")
    for base in _serve(tmp_path):
        browser.get(f"{base}/index.html")
        found = browser.execute_async_script(PAGE_PROBLEMS)["problems"]
    assert any(p.startswith("broken image") for p in found) and any(p.startswith("error output") for p in found)
    assert "raw traceback" in found


def test_the_book_lists_every_notebook_in_order_and_every_page_shows_its_figures(browser, site):
    # index.html only redirects (a meta refresh) to the landing page; open the landing page itself so that the checks
    # never run on a page the redirect is about to replace.
    browser.get(f"{site}/intro.html")
    links = browser.execute_script(
        "return [...document.querySelectorAll('nav.bd-docs-nav a.reference.internal')].map(a => a.href)")
    pages = [href.rsplit("/", 1)[-1].split("#")[0] for href in links]
    assert [p for p in pages if p[:2].isdigit()] == [f"{p.stem}.html" for p in NOTEBOOKS]
    assert "references.html" in pages
    assert "| BadNets" not in browser.page_source and "BadNets" in browser.find_element("tag name", "table").text
    landing = browser.execute_async_script(PAGE_PROBLEMS)
    assert not landing["problems"] and landing["images"] >= 1
    browser.save_screenshot(str(_artifacts() / "landing.png"))
    for path in NOTEBOOKS:
        browser.get(f"{site}/{path.stem}.html")
        title = browser.find_element("css selector", "article.bd-article h1").text  # not the print-only copy
        assert title.startswith(path.name[:2]), (path.name, title)
        assert "Run it yourself" in browser.page_source
        found = browser.execute_async_script(PAGE_PROBLEMS)
        assert not found["problems"], (path.name, found["problems"])
        executed = nbformat.read(ROOT / book.EXECUTED / path.name, as_version=4)
        shown = sum("image/png" in o.get("data", {})
                    for c in executed.cells if c.cell_type == "code" for o in c.outputs)
        assert found["figures"] == shown > 0, (path.name, found, shown)  # every figure of the run, on its page
        if path.name[:2] in ("05", "08"):
            browser.save_screenshot(str(_artifacts() / f"{path.stem}.png"))
    browser.get(f"{site}/references.html")
    # the style lowercases titles
    assert "unveiling and mitigating backdoor vulnerabilities" in browser.page_source.lower()
