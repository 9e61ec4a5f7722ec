"""The results browser (experiments/report/site.py) on simulated records: every run of a profile has a page that
the index leads to, a failed run's page shows its error, the pages load nothing from the network and link nothing
that is missing, regenerating changes no byte; and (slow) in a real headless Chromium: no console messages, the
scripts ran, and every run of the profile is shown."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from experiments.cli import main
from experiments.harness import sweep as sweep_mod
from experiments.harness import train as train_mod
from experiments.harness.records import iter_records
from experiments.report.site import INDEX, SITE, curve_svg, write_site
from tests.helpers import fake_train, n_planned

FAMILY, PROFILE = "glue", "smoke"
FAILING = ("dora-r2", "stsb")  # (experiment, task) whose run fails
ERROR = "simulated <failure> & more"  # markup in an error must be shown as text


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results folder with the glue smoke profile's runs (simulated training; one failed) and its tables and
    site, written by the `tables` command as `make tables` runs it."""
    root = tmp_path_factory.mktemp("results")

    def train(cfg, *, seed, profile, progress=True):
        if (cfg.name, cfg.task) == FAILING:
            raise RuntimeError(ERROR)
        return fake_train(cfg, seed=seed, profile=profile)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_mod, "train_and_evaluate", train)
        sweep_mod.sweep(FAMILY, PROFILE, root, jobs=1, progress=False, log=lambda s: None)
    assert main(["tables", "--family", FAMILY, "--profile", PROFILE, "--results-dir", str(root)]) == 0
    return root


class Page(HTMLParser):
    """The tags of a page with their attributes, and the rows of each table (attributes and text)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: dict[str, list[tuple[dict[str, str | None], str]]] = {}
        self._tables: list[str] = []
        self._in_body = False
        self._row: tuple[dict[str, str | None], list[str]] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self._tables.append(dict(attrs).get("id") or "")
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._tables and self._in_body:
            self._row = (dict(attrs), [])

    def handle_endtag(self, tag):
        if tag == "table" and self._tables:
            self._tables.pop()
        elif tag == "tbody":
            self._in_body = False
        elif tag == "tr" and self._row is not None:
            self.rows.setdefault(self._tables[-1], []).append((self._row[0], "".join(self._row[1]).strip()))
            self._row = None

    def handle_data(self, data):
        if self._row is not None:
            self._row[1].append(data)

    def links(self) -> list[str]:
        return [a["href"] for tag, a in self.tags if tag == "a" and a.get("href")]

    def body_rows(self, table: str) -> list[tuple[dict[str, str | None], str]]:
        return self.rows.get(table, [])


def _target(page: Path, href: str) -> Path | None:
    """The local file a link of `page` points to (None for a link to elsewhere, or within the page)."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    return (page.parent / parts.path).resolve()


def _run_page(results: Path, record: Path) -> Path:
    rel = record.relative_to(results / PROFILE / FAMILY)
    return results / SITE / PROFILE / FAMILY / "runs" / rel.with_suffix(".html")


def _records(results: Path) -> list[Path]:
    return iter_records(results / PROFILE / FAMILY)


def _site_files(results: Path) -> dict[str, bytes]:
    files = [results / INDEX, *sorted(p for p in (results / SITE).rglob("*") if p.is_file())]
    return {p.relative_to(results).as_posix(): p.read_bytes() for p in files}


def test_every_run_has_a_page_that_the_index_leads_to(results):
    seen, todo = set(), [(results / INDEX).resolve()]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for href in Page(page.read_text()).links():
            target = _target(page, href)
            if target is not None and target.suffix == ".html":
                todo.append(target)
    records = _records(results)
    assert len(records) == n_planned(FAMILY)  # every planned run, the failed one included
    pages = {_run_page(results, r).resolve() for r in records}
    assert pages <= seen, sorted(pages - seen)
    runs = results / SITE / PROFILE / FAMILY / "runs"
    assert set(runs.rglob("*.html")) == {_run_page(results, r) for r in records}
    family = Page((results / SITE / PROFILE / FAMILY / "index.html").read_text())
    assert len(family.body_rows("runs-table")) == len(records)


def test_a_failed_run_shows_its_error(results):
    (failed,) = [r for r in _records(results) if r.parent.parts[-2:] == FAILING]
    html = _run_page(results, failed).read_text()
    escaped = "simulated &lt;failure&gt; &amp; more"
    assert "status-failed" in html and f"RuntimeError: {escaped}" in html and ERROR not in html
    assert "Not counted in the table: the run is failed." in html
    rows = Page((results / SITE / PROFILE / FAMILY / "index.html").read_text()).body_rows("runs-table")
    (row,) = [text for _, text in rows if "failed" in text]
    assert FAILING[0] in row and f"RuntimeError: {ERROR}" in row  # the parser gives the text unescaped


def test_complete_runs_show_scores_curve_and_provenance(results):
    rec = next(r for r in _records(results) if r.parent.parts[-2:] == ("lora-r2", "cola"))
    html = _run_page(results, rec).read_text()
    assert 'class="status status-complete"' in html and "Counted in the table." in html
    assert '<svg class="curve"' in html and '<h2 id="provenance">' in html and "config hash" in html


def test_pages_load_nothing_from_the_network_and_link_nothing_missing(results):
    resource = {("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src"), ("source", "src"),
                ("embed", "src"), ("video", "src"), ("audio", "src"), ("object", "data"), ("img", "srcset")}  # fmt: skip
    pages = [results / INDEX, *sorted((results / SITE).rglob("*.html"))]
    assert len(pages) > 10
    for page in pages:
        parsed = Page(page.read_text())
        for tag, attrs in parsed.tags:
            for name, value in attrs.items():
                if (tag, name) in resource and value:
                    assert not urlsplit(value).scheme and not value.startswith("//"), (page, tag, value)
                    target = _target(page, value)
                    assert target is not None and target.is_file(), (page, value)
            assert "url(" not in (attrs.get("style") or ""), (page, tag)
        for href in parsed.links():
            target = _target(page, href)
            assert target is None or target.is_file(), (page, href)
        assert "<style" not in page.read_text() and "@import" not in page.read_text()
    for css in (results / SITE / "assets").glob("*.css"):
        text = css.read_text()
        assert "url(" not in text and "@import" not in text


def test_regenerating_changes_no_byte(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    first = _site_files(copy)
    write_site(copy)
    assert _site_files(copy) == first
    (copy / INDEX).unlink()
    shutil.rmtree(copy / SITE)
    # another process with another hash seed: nothing may depend on set or dict iteration order
    code = f"from experiments.report.site import write_site; write_site({str(copy)!r})"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parents[1])
    assert _site_files(copy) == first


def test_pages_of_records_that_are_gone_are_removed(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    gone = next(r for r in _records(copy) if r.parent.parts[-2:] == ("lora-r2", "stsb"))
    shutil.rmtree(gone.parent)
    write_site(copy)
    assert not _run_page(copy, gone).exists() and not _run_page(copy, gone).parent.exists()
    assert all(_run_page(copy, r).is_file() for r in _records(copy))
    rows = Page((copy / SITE / PROFILE / FAMILY / "index.html").read_text()).body_rows("runs-table")
    assert len(rows) == n_planned(FAMILY) - 1 and not any("lora-r2/stsb/" in text for _, text in rows)


def test_records_that_do_not_check_get_a_page_naming_the_problem(results, tmp_path):
    """A corrupt file and a record of the wrong shape (sections of the wrong type) do not stop the site: each has
    a page that says what is wrong with it."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    records = {r.parent.parts[-2:]: r for r in _records(copy)}
    corrupt, malformed = records[("lora-r2", "stsb")], records[("full", "cola")]
    corrupt.write_text('{"status": "compl')
    rec = json.loads(malformed.read_text())
    rec |= {"provenance": "x", "test": [1], "validation_curve": 3, "best_step": "2", "param_counts": []}
    malformed.write_text(json.dumps(rec))
    write_site(copy)
    html = _run_page(copy, corrupt).read_text()
    assert "status-corrupt" in html and "Unreadable" in html and "corrupt run record" in html
    html = _run_page(copy, malformed).read_text()
    assert "Left out of the tables" in html and "No test scores" in html and "No validation curve" in html
    rows = Page((copy / SITE / PROFILE / FAMILY / "index.html").read_text()).body_rows("runs-table")
    assert len(rows) == n_planned(FAMILY) and any("corrupt" in text for _, text in rows)


def test_a_folder_without_tables_is_left_out(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (copy / PROFILE / FAMILY / "table.md").unlink()
    write_site(copy)
    assert not (copy / SITE / PROFILE).exists()
    assert "No generated tables yet" in (copy / INDEX).read_text()


def test_curve_points_land_on_the_axes_ends_and_the_kept_step_is_marked():
    # plot area: x from 52 to 348 (360 wide, margins 52 and 12), y from 18 to 124 (150 high, margins 18 and 26)
    curve = [{"step": 1, "val_score": 0.5}, {"step": 2, "val_score": None}, {"step": 3, "val_score": 0.7}]
    svg = curve_svg(curve, "val_score", best_step=3)
    assert '<polyline points="52.0,124.0 348.0,18.0"/>' in svg
    assert '<line class="best" x1="348.0"' in svg and "<title>step 3: 0.7</title>" in svg
    assert '<line class="best"' not in curve_svg(curve, "val_score", best_step=4)  # outside the steps drawn
    flat = curve_svg([{"step": 5, "val_loss": 1.0}], "val_loss")  # one point: centred, no division by zero
    assert '<polyline points="200.0,71.0"/>' in flat
    assert curve_svg(curve, "val_loss") == ""


# -- in a browser --------------------------------------------------------------------------------------------------


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium on PATH (`make test-slow` installs Debian's)")
    return exe


def _browse(url: str, profile_dir: Path) -> tuple[Page, list[str]]:
    """The DOM of `url` after its scripts ran (headless Chromium's --dump-dom) and every console message the page
    logged (Chromium writes each, errors and uncaught exceptions included, as a CONSOLE line on stderr)."""
    cmd = [_chromium(), "--headless", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile_dir}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", url]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(2, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)
    return Page(proc.stdout), [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow
def test_a_browser_shows_every_run_without_console_errors(results, tmp_path):
    profile_dir = tmp_path / "chromium"
    probe = tmp_path / "probe.html"  # the console check itself: a page that logs an error is caught
    probe.write_text("<!DOCTYPE html><html><body><script>console.error('probe')</script></body></html>")
    assert any("probe" in line for line in _browse(probe.as_uri(), profile_dir)[1])

    index, console = _browse((results / INDEX).as_uri(), profile_dir)
    assert console == []
    assert ("body", {"data-ready": "1"}) in index.tags  # site.js ran after tablesort loaded
    assert any(t == "th" and a.get("role") == "columnheader" for t, a in index.tags)  # tablesort set up
    assert any(t == "span" and a.get("id") == "families-count" for t, a in index.tags)

    records = _records(results)
    family_page = results / SITE / PROFILE / FAMILY / "index.html"
    family, console = _browse(family_page.as_uri(), profile_dir)
    assert console == []
    rows = family.body_rows("runs-table")
    assert len(rows) == len(records) and not any("hidden" in attrs for attrs, _ in rows)
    shown = {a["href"] for t, a in family.tags if t == "a" and a.get("href", "").startswith("runs/")}
    assert {_run_page(results, r).relative_to(family_page.parent).as_posix() for r in records} <= shown

    # the filter box, filled from the page's address
    filtered, console = _browse(family_page.as_uri() + "?q=failed", profile_dir)
    assert console == []
    visible = [text for attrs, text in filtered.body_rows("runs-table") if "hidden" not in attrs]
    assert len(visible) == 1 and FAILING[0] in visible[0]

    (failed,) = [r for r in records if r.parent.parts[-2:] == FAILING]
    run, console = _browse(_run_page(results, failed).as_uri(), profile_dir)
    assert console == [] and ("body", {"data-ready": "1"}) in run.tags
    assert any(t == "pre" and a.get("class") == "error" for t, a in run.tags)
