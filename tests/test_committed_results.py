"""The committed results are current: every run a committed CPU profile (`cpu`, `cpu-power`) plans is complete for the code in
this checkout (none stale, none missing), so `make reproduce` on a fresh clone reruns nothing and only
regenerates the tables, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from experiments.harness.plan import plan_status
from experiments.harness.records import REPO_ROOT
from experiments.report.site import INDEX, SITE, write_site
from experiments.report.tables import write_tables

RESULTS = REPO_ROOT / "results"
COMMITTED = [("glue", "cpu"), ("glue", "cpu-power"), ("commonsense", "cpu")]


@pytest.mark.parametrize("family,profile", COMMITTED)
def test_committed_profile_is_complete_and_current(family, profile):
    folder = RESULTS / profile / family
    if not folder.is_dir():
        pytest.skip(f"no committed results for {family}/{profile}")
    rows = plan_status(family, profile, RESULTS)
    bad = [(r["experiment"], r["task"], r["seed"], r["status"]) for r in rows if r["status"] != "complete"]
    assert not bad, f"committed records that `make reproduce` would rerun: {bad[:5]}"
    commits = set()
    for r in rows:
        rec = __import__("json").loads(Path(r["path"]).read_text())
        commits.add(rec["provenance"]["git"]["commit"])
        assert rec["provenance"]["git"]["dirty"] is False
    assert len(commits) == 1, f"records of {family}/{profile} come from several commits: {commits}"


@pytest.mark.parametrize("family,profile", COMMITTED)
def test_regenerated_tables_equal_the_committed_ones(family, profile, tmp_path):
    folder = RESULTS / profile / family
    if not (folder / "table.md").is_file():
        pytest.skip(f"no committed tables for {family}/{profile}")
    scratch = tmp_path / "results"
    shutil.copytree(RESULTS / profile / family, scratch / profile / family)
    generated = ("table.md", "table.csv", "verdict.md", "summary.json", "score_vs_params.png", "LOG.md")
    for name in generated:
        (scratch / profile / family / name).unlink(missing_ok=True)  # regenerate from the records alone
    for path in write_tables(family, profile, scratch):
        committed = folder / path.name
        assert committed.read_bytes() == path.read_bytes(), f"{path.name} differs from the committed file"


@pytest.mark.parametrize("family,profile", COMMITTED)
def test_committed_verdicts_carry_their_manipulation_check(family, profile):
    """Every judged claim of a committed summary with a control that ran shows its changed predictions, and a
    claim whose treatment did not act reads "not exercised" (never a decisive verdict)."""
    import json

    path = RESULTS / profile / family / "summary.json"
    if not path.is_file():
        pytest.skip(f"no committed tables for {family}/{profile}")
    verdict = json.loads(path.read_text())["verdict"]
    assert verdict["claims"], "a committed profile judges at least one claim"
    for c in verdict["claims"]:
        assert c["verdict"] in ("supported", "excluded", "inconclusive", "not exercised"), c["verdict"]
        check = c["manipulation"]
        assert check is not None and check["changed"] is not None, c["claim"]["id"]
        assert check["acted"] == (check["changed"]["fraction"] >= verdict["acted_threshold"] > 0)
        assert (c["verdict"] == "not exercised") == (not check["acted"])
        if c["n_seeds"] < verdict["min_seeds"]:
            assert c["verdict"] in ("inconclusive", "not exercised")


def test_the_committed_results_browser_is_current(tmp_path):
    """results/index.html and results/site/ are what `make tables` writes from the records and tables beside them:
    regenerated from a copy without them, no file differs and none is added or missing."""
    if not (RESULTS / INDEX).is_file():
        pytest.skip("no committed results browser")
    scratch = tmp_path / "results"
    top = str(RESULTS)
    shutil.copytree(
        RESULTS, scratch, ignore=lambda d, names: [n for n in names if d == top and n in (SITE, INDEX)]
    )
    write_site(scratch)

    def files(root: Path) -> dict[str, bytes]:
        paths = [root / INDEX, *(p for p in (root / SITE).rglob("*") if p.is_file())]
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths}

    committed, regenerated = files(RESULTS), files(scratch)
    assert sorted(committed) == sorted(regenerated), "pages added or missing: run `make tables`"
    assert [n for n in committed if committed[n] != regenerated[n]] == [], "stale pages: run `make tables`"
