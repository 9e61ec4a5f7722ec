"""GLUE data: the original task files (tab-separated, as `download_glue_data.py` lays them out) and the hub.

Local files (../shared/data/glue/<TASK>/{train,dev}.tsv) are read as GLUE's own loaders read them: split on
tabs with no quote handling (MRPC, RTE and STS-B hold unbalanced `"`), CoLA has no header, MRPC's header starts
with a byte-order mark. Labels follow the hub's `nyu-mll/glue` encoding (RTE: 0 = entailment,
1 = not_entailment), so local and hub data give the same numbers. GLUE's test labels are private: the dev set
is the reported test set, and validation is carved out of train.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.harness.datadir import shared_data_dir
from experiments.harness.errors import BadDataError, MissingFileError

DATA_ENV_VAR = "LORADASH_GLUE_DIR"


class GlueFormatError(BadDataError):
    """A malformed GLUE file, naming the file, the line and the field."""

    def __init__(self, source: str | Path, line: int | str, field: str, problem: str):
        super().__init__(f"{source}:{line}: {field}: {problem}")


@dataclass(frozen=True)
class TaskSpec:
    folder: str  # folder of the GLUE download
    hub_config: str  # config name of nyu-mll/glue
    text_fields: tuple[str, ...]  # hub column names of the one or two texts
    num_labels: int  # 1 = regression (STS-B)
    label_names: tuple[str, ...] = ()  # local label strings in hub order (RTE's words); empty: integers
    # local TSV layout: header?, number of fields, column of each text, column of the label
    header: bool = True
    n_fields: tuple[int, ...] = ()  # allowed field counts (MNLI's dev has 16, its train 12)
    text_columns: tuple[int, ...] = ()
    label_column: int = -1
    hub_test_split: str = "validation"
    metric: str = "accuracy"  # the GLUE metric (see metrics.py)


TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("CoLA", "cola", ("sentence",), 2, header=False, n_fields=(4,), text_columns=(3,),
                     label_column=1, metric="mcc"),
    "sst2": TaskSpec("SST-2", "sst2", ("sentence",), 2, n_fields=(2,), text_columns=(0,), label_column=1),
    "mrpc": TaskSpec("MRPC", "mrpc", ("sentence1", "sentence2"), 2, n_fields=(5,), text_columns=(3, 4),
                     label_column=0, metric="f1_accuracy"),
    "rte": TaskSpec("RTE", "rte", ("sentence1", "sentence2"), 2, ("entailment", "not_entailment"),
                    n_fields=(4,), text_columns=(1, 2), label_column=3),
    "stsb": TaskSpec("STS-B", "stsb", ("sentence1", "sentence2"), 1, n_fields=(10,), text_columns=(7, 8),
                     label_column=9, metric="pearson_spearman"),
    # hub only here (too large for ../shared/data); the same loaders read their GLUE files when present
    "qnli": TaskSpec("QNLI", "qnli", ("question", "sentence"), 2, ("entailment", "not_entailment"),
                     n_fields=(4,), text_columns=(1, 2), label_column=3),
    "qqp": TaskSpec("QQP", "qqp", ("question1", "question2"), 2, n_fields=(6,), text_columns=(3, 4),
                    label_column=5, metric="f1_accuracy"),
    "mnli": TaskSpec("MNLI", "mnli", ("premise", "hypothesis"), 3, ("entailment", "neutral", "contradiction"),
                     n_fields=(12, 16), text_columns=(8, 9), label_column=-1, hub_test_split="validation_matched"),
    "wnli": TaskSpec("WNLI", "wnli", ("sentence1", "sentence2"), 2, n_fields=(4,), text_columns=(1, 2),
                     label_column=3),
}  # fmt: skip
LOCAL_FILES = {"train": "train.tsv", "test": "dev.tsv"}  # MNLI's matched dev is dev_matched.tsv
HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueExample:
    id: int  # row index in its file / split (0-based, header excluded)
    texts: tuple[str, ...]  # one or two texts
    label: float | int  # class index, or the similarity score (STS-B)


def spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown GLUE task {task!r} (known: {', '.join(TASKS)})")
    return TASKS[task]


def default_data_dir() -> Path:
    """`$LORADASH_GLUE_DIR`, else `<repo>/../shared/data/glue`."""
    return shared_data_dir(DATA_ENV_VAR, "glue", what="GLUE", hint="download GLUE (`download_glue_data.py` layout) "
                           f"or set data.source: hub to read {HUB_ID}")  # fmt: skip


def task_file(task: str, split: str, data_dir: Path) -> Path:
    name = LOCAL_FILES[split]
    if task == "mnli" and split == "test":
        name = "dev_matched.tsv"
    return Path(data_dir) / spec(task).folder / name


def _label(task: str, raw: str, source: Path, line: int) -> float | int:
    s = spec(task)
    if s.num_labels == 1:
        try:
            value = float(raw)
        except ValueError:
            raise GlueFormatError(source, line, "label", f"not a number: {raw!r}") from None
        if not 0.0 <= value <= 5.0:
            raise GlueFormatError(source, line, "label", f"similarity {value} outside [0, 5]")
        return value
    if s.label_names:
        if raw not in s.label_names:
            raise GlueFormatError(source, line, "label", f"{raw!r} is not one of {list(s.label_names)}")
        return s.label_names.index(raw)
    if raw not in {str(i) for i in range(s.num_labels)}:
        raise GlueFormatError(source, line, "label", f"{raw!r} is not one of 0..{s.num_labels - 1}")
    return int(raw)


def load_tsv(task: str, path: str | Path) -> list[GlueExample]:
    """One GLUE .tsv file; a malformed row is an error naming the file, line and field."""
    s = spec(task)
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"GLUE {task}: no file {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # MRPC's header starts with a byte-order mark
    except UnicodeDecodeError as e:
        raise GlueFormatError(path, "?", "<file>", f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    start = 1 if s.header else 0
    if len(rows) <= start:
        raise GlueFormatError(path, 1, "<file>", "no data rows")
    out = []
    for i, row in enumerate(rows[start:]):
        line = i + start + 1  # 1-based line number in the file
        if len(row) not in s.n_fields:
            expected = " or ".join(map(str, s.n_fields))
            raise GlueFormatError(
                path, line, "<row>", f"{len(row)} tab-separated fields, expected {expected}"
            )
        texts = tuple(row[c] for c in s.text_columns)
        for c, t in zip(s.text_columns, texts, strict=True):
            if not t.strip():
                raise GlueFormatError(path, line, f"column {c}", "empty text")
        out.append(GlueExample(i, texts, _label(task, row[s.label_column], path, line)))
    return out


def convert_hub_row(task: str, row: Mapping[str, Any], index: int, source: str = HUB_ID) -> GlueExample:
    """A row of nyu-mll/glue (columns: the task's texts, `label`, `idx`) as a GlueExample."""
    s = spec(task)
    missing = [f for f in (*s.text_fields, "label") if f not in row]
    if missing:
        raise GlueFormatError(source, index, missing[0], "missing column")
    label = row["label"]
    if s.num_labels == 1:
        ok = isinstance(label, (int, float)) and not isinstance(label, bool)
    else:
        ok = isinstance(label, int) and not isinstance(label, bool) and 0 <= label < s.num_labels
    if not ok:  # the hub's test splits carry label -1 (private)
        raise GlueFormatError(source, index, "label", f"{label!r} is not a valid label (private test split?)")
    idx = row.get("idx", index)
    return GlueExample(int(idx), tuple(str(row[f]) for f in s.text_fields), float(label) if s.num_labels == 1
                       else int(label))  # fmt: skip


def load_hub_split(task: str, split: str, *, path: str = HUB_ID, data_files: Any = None) -> list[GlueExample]:
    """`split` ("train" or "test" = the GLUE dev set) of a task from the hub (or local files in the hub's
    schema, e.g. parquet exports, through `data_files`)."""
    from datasets import load_dataset

    s = spec(task)
    hub_split = "train" if split == "train" else s.hub_test_split
    if data_files is not None:
        ds = load_dataset(path, data_files=data_files, split=hub_split)
    else:
        ds = load_dataset(path, s.hub_config, split=hub_split)
    source = f"{path}[{s.hub_config}/{hub_split}]"
    rows = [convert_hub_row(task, row, i, source) for i, row in enumerate(ds)]
    if not rows:  # as load_tsv's "no data rows": a data error now, not a run that dies later
        raise GlueFormatError(source, "-", "<split>", "no rows")
    return rows


def rows_in_hub_schema(task: str, examples: Iterable[GlueExample]) -> list[dict[str, Any]]:
    """The inverse of `convert_hub_row` (for tests and for writing local mirrors)."""
    s = spec(task)
    return [
        {**dict(zip(s.text_fields, e.texts, strict=True)), "label": e.label, "idx": e.id} for e in examples
    ]
