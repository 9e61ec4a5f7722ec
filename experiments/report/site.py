"""A static results browser, from the run records and the files `make tables` generates: `results/index.html`
and pages under `results/site/` (README: "Results browser").

- `results/index.html`: every (profile, family) folder that has generated tables, with its overall verdict, run
  counts and score plot, linking its page;
- `results/site/<profile>/<family>/index.html`: the summary table (summary.json's rows; sortable, filterable), the
  verdicts (verdict.md as HTML), the plots (the folder's PNGs, linked by relative path, not copied), every run
  record (sortable, filterable; failed ones with their error) and table.md as HTML;
- `results/site/<profile>/<family>/runs/<record path>.html`: one page per run record: status and error, per-task
  scores, the validation curve (inline SVG), times, provenance, parameter counts, diagnostics and config.

No server and no network at view time: the pages load only the files in `results/site/assets/` (copied from
`site_assets/`: tablesort, vendored, and the project's own script and style). Like the tables, the site is a
function of the files it reads: sorted iteration, no clock, ids from record paths, so that regenerating from the
same records changes no byte; every file is written atomically (tables' `_write`), and pages of records that are
gone are removed.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from experiments.harness.errors import CorruptRecordError
from experiments.harness.records import RECORD_NAME, check_record, iter_records, read_record
from experiments.harness.registry import Family, available_families, get_family
from experiments.report.tables import _write

SITE = "site"  # results/site/
INDEX = "index.html"  # results/index.html
HERE = Path(__file__).resolve().parent
ASSETS = ("site.css", "site.js", "tablesort.min.js", "tablesort.number.min.js", "tablesort-LICENCE.txt")
GENERATED = ("table.md", "table.csv", "verdict.md", "summary.json", "LOG.md")  # linked from a family's page
STALE_SUFFIXES = (".html", ".css", ".js", ".txt")  # what a regeneration may remove under results/site/


@dataclass
class Run:
    """One run record as the site shows it."""

    record_path: Path  # the JSON, relative to the results folder
    page: Path  # its page, relative to the results folder
    experiment: str
    task: str | None
    seed: int
    lr_tag: str
    record: dict[str, Any]  # {} for a corrupt file
    status: str  # the record's, or "corrupt"
    problems: list[str]  # why the tables leave it out (check_record), or the read error
    in_table: bool = False
    table_note: str = ""  # why it is or is not counted in the table

    @property
    def label(self) -> str:
        return "/".join(x for x in (self.experiment, self.task, f"seed{self.seed}_lr{self.lr_tag}") if x)

    @property
    def sort_key(self) -> tuple:
        return (self.experiment, self.task or "", float(self.lr_tag), self.seed)

    @property
    def score(self) -> float | None:
        """100 x the record's test score (None where it has none)."""
        score = _mapping(self.record.get("test")).get("score")
        return 100 * score if isinstance(score, (int, float)) and not isinstance(score, bool) else None

    @property
    def best_validation(self) -> float | None:
        """The selection metric at the step the run kept."""
        metric, step = self.record.get("selection_metric"), self.record.get("best_step")
        for point in _items(self.record.get("validation_curve")):
            if (
                isinstance(point, dict)
                and point.get("step") == step
                and isinstance(point.get(metric), (int, float))
            ):
                return float(point[metric])
        return None

    @property
    def commit(self) -> str:
        git = _mapping(_mapping(self.record.get("provenance")).get("git"))
        return (str(git.get("commit") or "?"))[:8] + ("+dirty" if git.get("dirty") else "")

    @property
    def error(self) -> str:
        return str(self.record.get("error") or (self.problems[0] if self.status == "corrupt" else ""))


@dataclass
class Section:
    """One (profile, family) folder with generated tables."""

    profile: str
    family: str
    folder: Path  # relative to the results folder
    page: Path
    summary: dict[str, Any] | None
    runs: list[Run]
    markdown: dict[str, str] = field(default_factory=dict)  # generated file name -> its text
    plots: list[Path] = field(default_factory=list)  # relative to the results folder

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.status for r in self.runs).items()))


def sections(results_dir: Path) -> list[Section]:
    """Every (profile, family) folder under `results_dir` that `make tables` wrote a table.md into, sorted."""
    families = set(available_families())
    found = []
    for table in sorted(results_dir.glob(f"*/*/{GENERATED[0]}")):
        folder = table.parent
        if folder.name in families and folder.parent.name != SITE:
            found.append(_section(results_dir, folder.parent.name, folder.name))
    return found


def _section(results_dir: Path, profile: str, family: str) -> Section:
    fam = get_family(family)
    rel = Path(profile) / family
    folder = results_dir / rel
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    runs = sorted((_run(results_dir, path, fam) for path in iter_records(folder)), key=lambda r: r.sort_key)
    _mark_table_runs(runs, summary)
    plots = sorted(
        (p.relative_to(results_dir) for p in (*folder.glob("*.png"), *folder.glob("analysis/*.png"))),
        key=lambda p: (p.parent != rel, p.name != "score_vs_params.png", p),
    )  # the score plot first
    text = {name: (folder / name).read_text() for name in GENERATED if (folder / name).is_file()}
    return Section(profile, family, rel, Path(SITE) / rel / "index.html", summary, runs, text, plots)


def _run(results_dir: Path, path: Path, fam: type[Family]) -> Run:
    rel = path.relative_to(results_dir)
    parts = rel.parts[2:]  # <experiment>/[<task>/]<file>, below <profile>/<family>
    name = RECORD_NAME.match(path.name)
    assert name is not None  # iter_records only yields matching names
    try:
        rec = read_record(path) or {}
        problems = check_record(path, rec, fam)
        status = str(rec.get("status"))
    except CorruptRecordError as e:
        rec, problems, status = {}, [str(e)], "corrupt"
    page = Path(SITE, *rel.parts[:2], "runs", *parts).with_suffix(".html")
    task = parts[1] if len(parts) == 3 else None
    return Run(rel, page, parts[0], task, int(name[1]), name[2], rec, status, problems)


def _mark_table_runs(runs: list[Run], summary: dict[str, Any] | None) -> None:
    """A run is in the table if the summary's row of its experiment counts its seed at its (task, rate); each run
    is told why it is or is not."""
    rows = {r["experiment"]: r for r in (summary or {}).get("rows", [])}
    chosen = (summary or {}).get("chosen_lr", {})
    for run in runs:
        row = rows.get(run.experiment)
        choice = chosen.get("/".join(x for x in (run.experiment, run.task) if x)) or {}
        lrs = {(t, float(lr)) for t, lr in (row or {}).get("lrs", [])}
        if run.status != "complete":
            run.table_note = f"Not counted in the table: the run is {run.status}."
        elif run.problems:
            run.table_note = "Not counted in the table: the record does not check (below)."
        elif summary is None or row is None:
            run.table_note = "Not counted: the table has no row for its experiment."
        elif (run.task or "-", run.record.get("lr")) not in lrs:
            lr = choice.get("lr")
            why = f"validation chose lr {lr:g}" if isinstance(lr, (int, float)) else "another rate was chosen"
            run.table_note = f"Not counted in the table: a run at another learning rate ({why})."
        elif run.seed not in row.get("seeds", []):
            run.table_note = "Not counted in the table: its seed is not among the profile's seeds."
        else:
            run.in_table, run.table_note = True, "Counted in the table."


# -- rendering --------------------------------------------------------------------------------------------------


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "site_templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters |= {
        "mapping": _mapping,
        "num": fmt_num,
        "sortval": sort_value,
        "duration": fmt_duration,
        "tojson_pretty": pretty_json,
    }
    return env


_MD = MarkdownIt("commonmark", {"html": False}).enable("table")  # generated markdown; raw HTML is not passed


def markdown(text: str) -> Markup:
    """A generated markdown file as HTML, its headings two levels down (the page has its own h1 and h2)."""
    tokens = _MD.parse(text)
    for t in tokens:
        if t.type in ("heading_open", "heading_close"):
            t.tag = f"h{min(6, int(t.tag[1]) + 2)}"
    return Markup(_MD.renderer.render(tokens, _MD.options, {}))


def fmt_num(x: Any, spec: str = ".2f") -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:{spec}}" if math.isfinite(x) else str(x)
    return str(x)


def sort_value(x: Any) -> str:
    """The data-sort attribute of a numeric cell (tablesort reads it before the text): the plain number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return ""
    return repr(x) if isinstance(x, int) else f"{x:.10g}"


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str)


def curve_svg(curve: list[dict[str, Any]], metric: str, best_step: int | None = None) -> Markup:
    """A small line chart of one validation metric over steps (inline SVG, no script): a point per evaluation
    with its value as a tooltip, the step the run kept (`best_step`) as a dashed line, the axes' ends labelled."""
    pts = [(float(p["step"]), float(p[metric])) for p in curve
           if isinstance(p.get("step"), (int, float)) and isinstance(p.get(metric), (int, float))
           and math.isfinite(p[metric])]  # fmt: skip
    width, height, left, right, top, bottom = 360, 150, 52, 12, 18, 26
    if not pts:
        return Markup("")
    (x0, x1), (y0, y1) = _span([x for x, _ in pts]), _span([y for _, y in pts])

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (height - top - bottom)

    out = [f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(metric)} over steps">',
           f'<text x="{left}" y="12">{escape(metric)}</text>',
           f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
           'fill="none" stroke="#ccc"/>']  # fmt: skip
    for value, ypix in ((y1, top), (y0, height - bottom)):
        out.append(f'<text x="{left - 4}" y="{ypix + 4}" text-anchor="end">{value:.4g}</text>')
    for value, anchor in ((x0, "start"), (x1, "end")):
        out.append(f'<text x="{sx(value):.1f}" y="{height - 8}" text-anchor="{anchor}">step {value:g}</text>')
    if best_step is not None and x0 <= best_step <= x1:
        xb = sx(best_step)
        out.append(f'<line class="best" x1="{xb:.1f}" y1="{top}" x2="{xb:.1f}" y2="{height - bottom}">'
                   f"<title>kept: step {best_step}</title></line>")  # fmt: skip
    out.append('<polyline points="' + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts) + '"/>')
    for x, y in pts:
        out.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5"><title>step {x:g}: {y:.6g}</title></circle>'
        )
    return Markup("".join(out) + "</svg>")


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    return (lo - 0.5, hi + 0.5) if hi == lo else (lo, hi)


def _rel(target: Path | str, page: Path) -> str:
    """`target` (relative to the results folder) as a link from `page` (relative to the results folder)."""
    return PurePosixPath(os.path.relpath(Path(target), page.parent)).as_posix()


def _mapping(x: Any) -> dict[str, Any]:
    """`x` if it is a dict, else {} (a record that does not check may hold anything anywhere)."""
    return x if isinstance(x, dict) else {}


def _items(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _curve_metrics(curve: list[dict[str, Any]]) -> list[str]:
    keys = {k for p in curve for k, v in p.items() if k != "step" and isinstance(v, (int, float))}
    return sorted(keys)


def _per_task(rec: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The scalar metrics of each task (per-item arrays left out) and their names, for the scores table."""
    per_task = _mapping(_mapping(rec.get("test")).get("per_task"))
    rows = [{"task": t, **{k: v for k, v in r.items() if k != "items" and not isinstance(v, (dict, list))}}
            for t, r in sorted(per_task.items()) if isinstance(r, dict)]  # fmt: skip
    metrics = sorted({k for r in rows for k in r if k not in ("task", "n")})
    return metrics, rows


SHOWN = {  # record fields the run page shows in their own sections; the rest go under "other fields"
    "schema_version", "status", "family", "profile", "experiment", "task", "method", "method_params", "seed", "lr",
    "config", "config_hash", "provenance", "started_at", "finished_at", "wall_time_s", "train_time_s",
    "peak_memory_mib", "param_counts", "validation_curve", "best_step", "selection_metric", "diagnostics",
    "error", "traceback", "identity", "examples_seen", "max_steps",
}  # fmt: skip


def _other_fields(rec: dict[str, Any]) -> dict[str, Any]:
    other = {k: v for k, v in rec.items() if k not in SHOWN and k != "test"}
    test = rec.get("test")
    if isinstance(test, dict):
        rest = {k: v for k, v in test.items() if k not in ("per_task", "score", "primary_metric")}
        items = {t: {k: f"{len(v)} values" for k, v in sorted(_mapping(r.get("items")).items()) if isinstance(v, list)}
                 for t, r in sorted(_mapping(test.get("per_task")).items()) if isinstance(r, dict)}  # fmt: skip
        if items:
            rest["per-item arrays (in the record)"] = items
        if rest:
            other["test"] = rest
    return other


def write_site(results_dir: str | Path) -> list[Path]:
    """Write the browser for every folder of `results_dir` with generated tables; returns the files written
    (those already up to date included), index first. Pages left from records that are gone are removed."""
    results_dir = Path(results_dir)
    env = _env()
    found = sections(results_dir)
    written: list[Path] = []

    def emit(rel: Path, content: str | bytes) -> None:
        path = results_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, content)
        written.append(path)

    index = Path(INDEX)
    emit(index, env.get_template("index.html").render(
        sections=found, page=index, rel=_rel, assets=Path(SITE, "assets")))  # fmt: skip
    for name in ASSETS:
        emit(Path(SITE, "assets", name), (HERE / "site_assets" / name).read_bytes())
    for sec in found:
        emit(sec.page, env.get_template("family.html").render(
            sec=sec, page=sec.page, rel=_rel, assets=Path(SITE, "assets"), index=index, generated=GENERATED,
            markdown=markdown))  # fmt: skip
        for run in sec.runs:
            rec = run.record
            metrics, per_task = _per_task(rec)
            curve = [p for p in _items(rec.get("validation_curve")) if isinstance(p, dict)]
            best = rec.get("best_step") if isinstance(rec.get("best_step"), int) else None
            emit(run.page, env.get_template("run.html").render(
                sec=sec, run=run, rec=rec, page=run.page, rel=_rel, assets=Path(SITE, "assets"), index=index,
                metrics=metrics, per_task=per_task, other=_other_fields(rec),
                curves=[curve_svg(curve, m, best) for m in _curve_metrics(curve)]))  # fmt: skip
    _remove_stale(results_dir / SITE, set(written))
    return written


def _remove_stale(site: Path, keep: set[Path]) -> None:
    """Remove the site's pages and assets that this regeneration did not write (a record moved away, a
    family folder gone), then the folders left empty."""
    if not site.is_dir():
        return
    for path in sorted(site.rglob("*"), reverse=True):
        if path.is_file() and path.suffix in STALE_SUFFIXES and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
