"""Commonsense-reasoning data in the LLM-Adapters format (the paper's Table 1 protocol).

The paper trains on ``commonsense_170k.json`` and evaluates on eight test sets, all taken from the
LLM-Adapters repository (github.com/AGI-Edgerunners/LLM-Adapters, folder ``dataset/``).  Every file is a
JSON array of ``{"instruction", "input", "output", "answer"}`` string objects.  The instruction holds
the question, the enumerated choices and an ``Answer format: ...`` line, so a scorer that only looks at
``answer`` never needs the choices; we parse them anyway because (a) log-likelihood evaluation and
sanity checks need the choice texts and (b) parsing proves a file really is in the format the
reference generated, instead of failing silently at evaluation time.

Each task has its own fixed template (separators reproduced byte-for-byte, see ``_TEMPLATES``); the
parser keeps question and choice texts verbatim, so ``render_instruction(task, ex.question,
ex.choices) == ex.instruction`` for every item of the real files.

Nothing here downloads anything; ``scripts/prepare_commonsense.py`` builds the files from the hub originals.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from experiments.harness.datadir import shared_data_dir
from experiments.harness.errors import BadDataError, MissingFileError

__all__ = [
    "DATA_ENV_VAR",
    "LABELS",
    "MIXED_FILE_NAME",
    "SAME_TEMPLATE_TASKS",
    "SPLITS",
    "TASKS",
    "DataFormatError",
    "Example",
    "default_data_dir",
    "detect_task",
    "extract_answer",
    "load_examples",
    "load_mixed",
    "mixed_file",
    "parse_item",
    "render_instruction",
    "task_file",
    "write_items",
]

# The LLM-Adapters folder names, in the order of the paper's Table 1 and of the reference's
# ``--dataset`` choices (commonsense_evaluate.py, parse_args).
TASKS: tuple[str, ...] = (
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Easy",
    "ARC-Challenge",
    "openbookqa",
)


def _numbered(stem: str, n: int) -> tuple[str, ...]:
    return tuple(f"{stem}{i}" for i in range(1, n + 1))


# Label vocabulary of each task = the alternatives of the reference's answer regex
# (commonsense_evaluate.py, extract_answer).  SIQA's data only uses answer1..3 and ARC-Challenge's only
# answer1..4, but the reference accepts answer1..5 for SIQA/ARC/OBQA, so we do too.
LABELS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": _numbered("solution", 2),
    "social_i_qa": _numbered("answer", 5),
    "hellaswag": _numbered("ending", 4),
    "winogrande": _numbered("option", 2),
    "ARC-Easy": _numbered("answer", 5),
    "ARC-Challenge": _numbered("answer", 5),
    "openbookqa": _numbered("answer", 5),
}

# SIQA, ARC-e, ARC-c and OBQA share one template and one label vocabulary: an instruction alone cannot
# tell them apart (see detect_task).
SAME_TEMPLATE_TASKS: tuple[str, ...] = ("social_i_qa", "ARC-Easy", "ARC-Challenge", "openbookqa")

SPLITS: tuple[str, ...] = ("train", "test")
DATA_ENV_VAR = "LORADASH_DATA_DIR"
MIXED_FILE_NAME = "commonsense_170k.json"
_REQUIRED_FIELDS: tuple[str, ...] = ("instruction", "output", "answer")
_FORMAT_LEAD = "Answer format: "

_WHERE_TO_GET = (
    "Get the LLM-Adapters commonsense data from https://github.com/AGI-Edgerunners/LLM-Adapters "
    "(folder dataset/<task>/{train,test}.json; commonsense_170k.json is in ft-training_set/), or build "
    "it from the Hugging Face hub originals with scripts/prepare_commonsense.py --out <data_dir>. "
    f"Lay it out as <data_dir>/<task>/<split>.json and set {DATA_ENV_VAR}=<data_dir>."
)


# --------------------------------------------------------------------------------------------------
# Errors and the parsed record


class DataFormatError(BadDataError):
    """A data file or item is not in the LLM-Adapters format.

    The message always names the source file and, where they apply, the item index and the field, so
    a broken line in a 170k-item file can be found without a debugger.
    """

    def __init__(self, source: str, index: int | None, field: str | None, problem: str) -> None:
        self.source = source
        self.index = index
        self.field = field
        self.problem = problem
        where = [str(source)]
        if index is not None:
            where.append(f"item {index}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce would call cls(message) and fail; keep the error picklable so it can
        # cross a DataLoader worker boundary.
        return (type(self), (self.source, self.index, self.field, self.problem))


@dataclass(frozen=True)
class Example:
    """One parsed LLM-Adapters item.

    ``question`` and ``choices`` are the exact texts that were substituted into the task's template
    (not stripped), ``label`` indexes ``choices``.  For BoolQ the choices are ``("true", "false")``.
    The raw strings are kept because training uses ``instruction``/``output`` verbatim and scoring
    compares against ``answer``.
    """

    task: str
    question: str
    choices: tuple[str, ...]
    label: int
    instruction: str
    output: str
    answer: str
    input: str = ""

    @property
    def label_text(self) -> str:
        """Text of the correct choice."""
        return self.choices[self.label]


# --------------------------------------------------------------------------------------------------
# Templates


@dataclass(frozen=True)
class _Template:
    """One task's instruction layout, as the LLM-Adapters files spell it.

    Rendered as ``prefix + question + first_sep + "Marker1: " + c1 + between + "Marker2: " + c2 ...
    + end_sep + "Answer format: label1/label2/..."``.  BoolQ has no markers (``marker is None``).
    """

    prefix: str
    marker: str | None
    first_sep: str = "\n\n"
    between: str = " "
    end_sep: str = "\n\n"


_ANSWER_TEMPLATE = _Template("Please choose the correct answer to the question: ", "Answer")

# Separators read off the LLM-Adapters files (dataset/*/test.json at commit 81665720; HellaSwag's, too big
# for the stored snapshot, from a verbatim public copy of dataset/hellaswag/test.json).
_TEMPLATES: dict[str, _Template] = {
    "boolq": _Template("Please answer the following question with true or false, question: ", None),
    # PIQA puts a blank line between the solutions.
    "piqa": _Template("Please choose the correct solution to the question: ", "Solution", between="\n\n"),
    "social_i_qa": _ANSWER_TEMPLATE,
    "hellaswag": _Template("Please choose the correct ending to complete the given sentence: ", "Ending"),
    # WinoGrande has no blank line before "Answer format", just a space.
    "winogrande": _Template(
        "Please choose the correct answer to fill in the blank to complete the given sentence: ",
        "Option",
        end_sep=" ",
    ),
    "ARC-Easy": _ANSWER_TEMPLATE,
    "ARC-Challenge": _ANSWER_TEMPLATE,
    "openbookqa": _ANSWER_TEMPLATE,
}


def _check_task(task: str) -> None:
    if task not in LABELS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


def _choice_separators(template: _Template, n: int) -> list[str]:
    """The literal strings that introduce choice 1..n."""
    assert template.marker is not None
    return [
        (template.first_sep if i == 1 else template.between) + f"{template.marker}{i}: "
        for i in range(1, n + 1)
    ]


def _format_line(task: str, n_choices: int) -> str:
    labels = LABELS[task] if _TEMPLATES[task].marker is None else LABELS[task][:n_choices]
    return _FORMAT_LEAD + "/".join(labels)


def render_instruction(task: str, question: str, choices: Sequence[str] = ()) -> str:
    """Build an instruction in ``task``'s exact LLM-Adapters template.

    The inverse of the parsing in ``parse_item``; ``convert_hub_row`` uses it so hub-built files are
    byte-identical to the reference's.  ``choices`` is ignored for BoolQ.
    """
    _check_task(task)
    template = _TEMPLATES[task]
    if template.marker is None:
        return template.prefix + question + template.end_sep + _format_line(task, 2)
    n = len(choices)
    if not 2 <= n <= len(LABELS[task]):
        raise ValueError(f"{task} takes 2..{len(LABELS[task])} choices, got {n}")
    body = "".join(sep + text for sep, text in zip(_choice_separators(template, n), choices, strict=True))
    return template.prefix + question + body + template.end_sep + _format_line(task, n)


# --------------------------------------------------------------------------------------------------
# Parsing


def detect_task(instruction: str) -> str:
    """Name the task whose template ``instruction`` follows (needed for the mixed commonsense_170k).

    BoolQ, PIQA, HellaSwag and WinoGrande have distinct templates.  SIQA, ARC-Easy, ARC-Challenge and
    OpenBookQA share one template and label set (``SAME_TEMPLATE_TASKS``), so for all of them this
    returns ``"social_i_qa"``: the family's largest member in commonsense_170k (~33k of ~42k items).
    Parsing and answer extraction are identical across the family, so nothing but per-task counts of
    a mixed file depends on the pick.  Raises ``ValueError`` for an unknown template.
    """
    for task in TASKS:  # SIQA comes before ARC/OBQA in TASKS, so it is the family's representative.
        if instruction.startswith(_TEMPLATES[task].prefix):
            return task
    prefixes = sorted({t.prefix.strip() for t in _TEMPLATES.values()})
    raise ValueError(
        f"instruction follows no known commonsense template (starts {instruction[:60]!r}); "
        f"expected one of: {prefixes}"
    )


def _require_str_fields(item: Any, source: str, index: int) -> dict[str, str]:
    if not isinstance(item, Mapping):
        raise DataFormatError(source, index, None, f"expected a JSON object, got {type(item).__name__}")
    fields: dict[str, str] = {}
    for name in _REQUIRED_FIELDS:
        if name not in item:
            raise DataFormatError(source, index, name, "missing")
        if not isinstance(item[name], str):
            raise DataFormatError(source, index, name, f"expected a string, got {type(item[name]).__name__}")
        fields[name] = item[name]
    # ``input`` is always "" in LLM-Adapters; tolerate its absence, not a wrong type.
    value = item.get("input", "")
    if not isinstance(value, str):
        raise DataFormatError(source, index, "input", f"expected a string, got {type(value).__name__}")
    fields["input"] = value
    return fields


# Builds the DataFormatError for the item being parsed from a problem description.
_ErrorFactory = Callable[[str], DataFormatError]


def _split_body(task: str, body: str, n: int, err: _ErrorFactory) -> tuple[str, tuple[str, ...]]:
    """Cut ``question Marker1: c1 Marker2: c2 ...`` at the first occurrence of each separator."""
    template = _TEMPLATES[task]
    parts: list[str] = []
    cursor = 0
    for sep in _choice_separators(template, n):
        found = body.find(sep, cursor)
        if found < 0:
            raise err(f"expected {sep!r} (the answer format lists {n} choices)")
        parts.append(body[cursor:found])
        cursor = found + len(sep)
    parts.append(body[cursor:])
    # A marker left inside a choice means the format line lists fewer choices than the text has.
    stray = re.compile(rf"(?:^|\s){template.marker}\d+: ")
    for i, text in enumerate(parts[1:], start=1):
        if stray.search(text):
            raise err(f"choice {i} contains a choice marker: {text[:80]!r}")
    return parts[0], tuple(parts[1:])


def _parse_instruction(task: str, instruction: str, err: _ErrorFactory) -> tuple[str, tuple[str, ...]]:
    template = _TEMPLATES[task]
    if not instruction.startswith(template.prefix):
        raise err(f"does not start with the {task} template {template.prefix!r}")
    match = re.search(r"Answer format: ([A-Za-z0-9/]+)\Z", instruction)
    if match is None:
        raise err("does not end with an 'Answer format: ...' line")
    listed = tuple(match.group(1).split("/"))
    n = len(listed)
    if template.marker is not None and not 2 <= n <= len(LABELS[task]):
        raise err(f"answer format lists {n} labels, {task} takes 2..{len(LABELS[task])}")
    if _FORMAT_LEAD + match.group(1) != _format_line(task, n):
        raise err(f"answer format {match.group(1)!r} is not {_format_line(task, n)[len(_FORMAT_LEAD) :]!r}")
    tail = template.end_sep
    start, stop = len(template.prefix), match.start() - len(tail)
    if instruction[stop : match.start()] != tail:
        raise err(f"expected {tail!r} before 'Answer format'")
    body = instruction[start:stop]
    if template.marker is None:
        question, choices = body, LABELS[task]
    else:
        question, choices = _split_body(task, body, n, err)
    if not question.strip():
        raise err("empty question")
    return question, choices


def parse_item(task: str, item: Mapping[str, Any], *, source: str = "<memory>", index: int = 0) -> Example:
    """Parse and validate one LLM-Adapters item of ``task``.

    Checks, each failing with a ``DataFormatError`` that names ``source``, ``index`` and the field:
    the four fields are strings (``input`` may be absent); the instruction follows the task's exact
    template; ``answer`` is one of ``LABELS[task]`` and indexes an existing choice; ``output`` names
    the same label first (it is the training target, so a disagreement would train on a wrong answer).
    Unknown ``task`` is a caller error: plain ``ValueError``.
    """
    _check_task(task)
    fields = _require_str_fields(item, source, index)

    def instruction_error(problem: str) -> DataFormatError:
        return DataFormatError(source, index, "instruction", problem)

    question, choices = _parse_instruction(task, fields["instruction"], instruction_error)
    answer = fields["answer"]
    if answer not in LABELS[task]:
        raise DataFormatError(source, index, "answer", f"{answer!r} is not a {task} label {LABELS[task]}")
    label = LABELS[task].index(answer)
    if label >= len(choices):
        raise DataFormatError(source, index, "answer", f"{answer!r} but the item has {len(choices)} choices")
    said = extract_answer(task, fields["output"])
    if said != answer:
        raise DataFormatError(
            source, index, "output", f"{fields['output']!r} names {said!r}, but answer is {answer!r}"
        )
    return Example(
        task=task,
        question=question,
        choices=tuple(choices),
        label=label,
        instruction=fields["instruction"],
        output=fields["output"],
        answer=answer,
        input=fields["input"],
    )


# --------------------------------------------------------------------------------------------------
# Files


def _read_item_list(path: str | os.PathLike[str]) -> tuple[str, list[Any]]:
    """Read a JSON array, turning every failure into an error that says what to do."""
    file = Path(path)
    source = str(file)
    if not file.is_file():
        raise MissingFileError(f"commonsense data file not found: {source}. {_WHERE_TO_GET}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            source, None, None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataFormatError(source, None, None, f"not UTF-8 text: {exc}") from exc
    if not isinstance(data, list):
        raise DataFormatError(
            source, None, None, f"expected a JSON array of items, got {type(data).__name__}"
        )
    if not data:  # a train or test set without examples: caught here, before a run divides by its size
        raise DataFormatError(
            source, None, None, "no items (an empty JSON array); a data file needs at least one"
        )
    return source, data


def load_examples(task: str, path: str | os.PathLike[str]) -> list[Example]:
    """Load and validate one task's LLM-Adapters file (e.g. ``<data_dir>/piqa/test.json``)."""
    _check_task(task)
    source, data = _read_item_list(path)
    return [parse_item(task, item, source=source, index=i) for i, item in enumerate(data)]


def load_mixed(path: str | os.PathLike[str]) -> list[Example]:
    """Load a commonsense_170k-style file mixing the 8 tasks; each item's task comes from detect_task.

    SIQA/ARC/OBQA items all come back as ``task="social_i_qa"`` (see ``detect_task``).
    """
    source, data = _read_item_list(path)
    examples = []
    for i, item in enumerate(data):
        fields = _require_str_fields(item, source, i)
        try:
            task = detect_task(fields["instruction"])
        except ValueError as exc:
            raise DataFormatError(source, i, "instruction", str(exc)) from exc
        examples.append(parse_item(task, item, source=source, index=i))
    return examples


def _repo_root() -> Path:
    # data.py lives in <repo>/experiments/commonsense/; the repo root is the parent of ``experiments``.
    return Path(__file__).resolve().parent.parent.parent


def default_data_dir() -> Path:
    """Where the LLM-Adapters data lives: ``$LORADASH_DATA_DIR``, else ``<repo>/../shared/data/commonsense``.

    The shared folder is the workspace convention (data sits beside the checkout, never inside it).
    Raises ``FileNotFoundError`` with download instructions when neither is available.
    """
    return shared_data_dir(
        DATA_ENV_VAR, "commonsense", what="commonsense", hint=_WHERE_TO_GET, repo_root=_repo_root()
    )


def task_file(task: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<data_dir>/<task>/<split>.json``, the LLM-Adapters ``dataset/`` layout."""
    _check_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return root / task / f"{split}.json"


def mixed_file(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<data_dir>/commonsense_170k.json`` (LLM-Adapters keeps it in ``ft-training_set/``)."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return root / MIXED_FILE_NAME


def write_items(items: Iterable[Mapping[str, str]], path: str | os.PathLike[str]) -> Path:
    """Write items as LLM-Adapters does (JSON array, 4-space indent), creating parent folders."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(list(items), indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return file


# --------------------------------------------------------------------------------------------------
# Answer extraction


@cache
def _answer_pattern(task: str, reference: bool) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(label) for label in LABELS[task])
    if reference:
        # commonsense_evaluate.py, extract_answer: re.findall(r'label1|label2|...', sentence)[0].
        return re.compile(alternatives)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def extract_answer(task: str, text: str, *, reference: bool = False) -> str | None:
    """The predicted label in a generated answer: the first match of the task's label vocabulary.

    ``reference=True`` reproduces LLM-Adapters ``commonsense_evaluate.extract_answer`` match for match:
    a case-sensitive, unanchored search for any label, first match wins.  That scores "True" as no
    answer, "untrue" as "true", "falsehood" as "false", "answer10" as "answer1" and "solution12" as
    "solution1".

    The default (robust) mode differs in exactly two ways, both aimed at the reference's mis-scores:
      1. case-insensitive ("True", "ANSWER2" count), returning the canonical lower-case label;
      2. whole tokens only: a label must not touch a letter, digit or underscore on either side, so
         "untrue", "falsehood", "answer10", "option12" are not answers.
    Both modes take the first match, so "answer2, not answer3" is "answer2".

    No match gives ``None`` in both modes (the reference returns ``""``; neither equals a label, so
    accuracy is unchanged, and ``None`` lets callers count the no-answer rate).
    """
    _check_task(task)
    match = _answer_pattern(task, reference).search(text)
    if match is None:
        return None
    return match.group(0) if reference else match.group(0).lower()
