"""experiments.commonsense.data: LLM-Adapters parsing, answer extraction, real files; the hub conversion of
scripts/prepare_commonsense.py."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import pytest

from experiments.commonsense import (
    LABELS,
    TASKS,
    DataFormatError,
    Example,
    default_data_dir,
    detect_task,
    extract_answer,
    load_examples,
    load_mixed,
    parse_item,
    render_instruction,
    task_file,
)
from experiments.commonsense import data as cs
from scripts import prepare_commonsense as prep
from scripts.prepare_commonsense import HUB_SOURCES, convert_hub_row, load_hub_split

FIXTURES = Path(__file__).parent / "fixtures" / "commonsense"
# The workspace's shared data folder, beside the checkout (see /work/shared/data/README.md).
REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "commonsense"

# /work/shared/data/README.md, commonsense table.
REAL_COUNTS = {
    ("boolq", "test"): 3270,
    ("boolq", "train"): 9427,
    ("piqa", "test"): 1838,
    ("social_i_qa", "test"): 1954,
    ("ARC-Challenge", "test"): 1172,
    ("ARC-Challenge", "train"): 1119,
    ("ARC-Easy", "test"): 2376,
    ("ARC-Easy", "train"): 2251,
    ("openbookqa", "test"): 500,
    ("openbookqa", "train"): 4957,
}


def _item(instruction: str, answer: str, output: str | None = None) -> dict[str, str]:
    return {
        "instruction": instruction,
        "input": "",
        "output": output if output is not None else f"the correct answer is {answer}",
        "answer": answer,
    }


def _write(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Constants


def test_tasks_and_labels_mirror_the_reference() -> None:
    assert TASKS == (
        "boolq",
        "piqa",
        "social_i_qa",
        "hellaswag",
        "winogrande",
        "ARC-Easy",
        "ARC-Challenge",
        "openbookqa",
    )
    assert set(LABELS) == set(TASKS) == set(HUB_SOURCES)
    assert LABELS["boolq"] == ("true", "false")
    assert LABELS["piqa"] == ("solution1", "solution2")
    assert LABELS["hellaswag"] == ("ending1", "ending2", "ending3", "ending4")
    assert LABELS["winogrande"] == ("option1", "option2")
    for task in ("social_i_qa", "ARC-Easy", "ARC-Challenge", "openbookqa"):
        # The reference regex accepts answer1..answer5 for all four, whatever the data uses.
        assert LABELS[task] == tuple(f"answer{i}" for i in range(1, 6))


def test_example_is_frozen() -> None:
    ex = load_examples("boolq", task_file("boolq", "test", FIXTURES))[0]
    with pytest.raises(AttributeError):
        ex.label = 1  # type: ignore[misc]
    assert isinstance(ex, Example)


# --------------------------------------------------------------------------------------------------
# Parsing the fixtures (one per task, exact LLM-Adapters templates)


def test_parse_boolq() -> None:
    ex = load_examples("boolq", task_file("boolq", "test", FIXTURES))
    assert [e.answer for e in ex] == ["true", "false", "true"]
    assert ex[0].question == "is the pacific ocean larger than the atlantic ocean?"
    assert ex[0].choices == ("true", "false")
    assert [e.label for e in ex] == [0, 1, 0]
    assert ex[1].label_text == "false"


def test_parse_piqa_keeps_texts_verbatim() -> None:
    ex = load_examples("piqa", task_file("piqa", "test", FIXTURES))
    assert ex[0].question == "How can I keep cut flowers fresh for longer?"
    assert ex[0].label == 1
    assert ex[0].choices[1] == "Trim the stems at an angle and change the water every two days."
    # Trailing and doubled spaces survive, as in the real PIQA file.
    assert ex[1].choices == ("can hold hot tea ", "can hold a  pile of wet sand for a year ")


def test_parse_social_i_qa() -> None:
    ex = load_examples("social_i_qa", task_file("social_i_qa", "test", FIXTURES))
    assert ex[0].question == (
        "Jordan left the umbrella at home and got soaked walking to work. How would Jordan feel afterwards?"
    )
    assert ex[0].choices == ("dry and warm", "uncomfortable", "excited about the rain")
    assert [e.label for e in ex] == [1, 0, 2]


def test_parse_hellaswag() -> None:
    ex = load_examples("hellaswag", task_file("hellaswag", "test", FIXTURES))
    assert ex[0].question == "Making a sandwich: A woman places two slices of bread on a cutting board. she"
    assert len(ex[0].choices) == 4 and ex[0].label == 0
    assert ex[1].choices[2].startswith("[step] If the soil is dry")
    assert [e.label for e in ex] == [0, 2, 3]


def test_parse_winogrande() -> None:
    ex = load_examples("winogrande", task_file("winogrande", "test", FIXTURES))
    assert ex[1].question == "Maria lent her notes to Emily because _ had missed the lecture."
    assert ex[1].choices == ("Maria", "Emily")
    assert [e.label for e in ex] == [0, 1, 0]


@pytest.mark.parametrize(
    ("task", "n_choices", "labels"),
    [
        ("ARC-Easy", [4, 3, 5], [1, 2, 4]),
        ("ARC-Challenge", [4, 4, 3], [1, 3, 0]),
        ("openbookqa", [4, 4, 4], [1, 0, 2]),
    ],
)
def test_parse_arc_and_obqa(task: str, n_choices: list[int], labels: list[int]) -> None:
    ex = load_examples(task, task_file(task, "test", FIXTURES))
    assert [len(e.choices) for e in ex] == n_choices
    assert [e.label for e in ex] == labels
    assert all("Answer format" not in e.question and "Answer1" not in e.question for e in ex)


@pytest.mark.parametrize("task", TASKS)
def test_render_inverts_parse_on_fixtures(task: str) -> None:
    for ex in load_examples(task, task_file(task, "test", FIXTURES)):
        assert render_instruction(task, ex.question, ex.choices) == ex.instruction


def test_parse_item_defaults_and_optional_input() -> None:
    item = _item(
        "Please answer the following question with true or false, question: is ice cold?\n\n"
        "Answer format: true/false",
        "true",
    )
    del item["input"]
    ex = parse_item("boolq", item)
    assert ex.input == "" and ex.question == "is ice cold?"


# --------------------------------------------------------------------------------------------------
# Validation errors


def _arc_instruction(n: int = 4) -> str:
    return render_instruction(
        "ARC-Easy", "Which is a mammal?", ["a whale", "a shark", "a trout", "a squid"][:n]
    )


@pytest.mark.parametrize(
    ("item", "field", "needle"),
    [
        ("not an object", None, "expected a JSON object"),
        (
            {"input": "", "output": "the correct answer is answer1", "answer": "answer1"},
            "instruction",
            "missing",
        ),
        ({**_item(_arc_instruction(), "answer1"), "answer": 1}, "answer", "expected a string"),
        ({**_item(_arc_instruction(), "answer1"), "input": None}, "input", "expected a string"),
        (_item(_arc_instruction(), "answer6"), "answer", "is not a ARC-Easy label"),
        (_item(_arc_instruction(), "Answer1"), "answer", "is not a ARC-Easy label"),
        (_item(_arc_instruction(3), "answer4"), "answer", "has 3 choices"),
        (_item(_arc_instruction(), "answer1", output="the correct answer is answer2"), "output", "names"),
        (_item(_arc_instruction(), "answer1", output=""), "output", "names None"),
        (_item(_arc_instruction().replace("Please choose", "Choose"), "answer1"), "instruction", "template"),
        (_item(_arc_instruction().replace(" Answer3: ", " answer3: "), "answer1"), "instruction", "Answer3"),
        (_item(_arc_instruction() + "\n", "answer1"), "instruction", "Answer format"),
        (_item(_arc_instruction().replace("/answer4", ""), "answer1"), "instruction", "choice marker"),
        (
            _item(_arc_instruction().replace("answer2/", "answer3/"), "answer1"),
            "instruction",
            "answer format",
        ),
        (
            _item(_arc_instruction().replace("Which is a mammal?", " "), "answer1"),
            "instruction",
            "empty question",
        ),
    ],
)
def test_parse_item_rejects(item: object, field: str | None, needle: str) -> None:
    with pytest.raises(DataFormatError) as info:
        parse_item("ARC-Easy", item, source="some/file.json", index=7)  # type: ignore[arg-type]
    err = info.value
    assert (err.source, err.index, err.field) == ("some/file.json", 7, field)
    message = str(err)
    assert "some/file.json" in message and "item 7" in message and needle in message
    if field is not None:
        assert repr(field) in message


def test_wrong_template_for_task_is_rejected() -> None:
    item = json.loads(task_file("piqa", "test", FIXTURES).read_text())[0]
    with pytest.raises(DataFormatError, match="boolq template"):
        parse_item("boolq", item)
    with pytest.raises(DataFormatError, match="answer format"):
        # Same prefix family, wrong label stem.
        parse_item(
            "winogrande",
            _item(
                _arc_instruction().replace(
                    "Please choose the correct answer to the question: ",
                    "Please choose the correct answer to fill in the blank to complete the given sentence: ",
                ),
                "option1",
            ),
        )


def test_unknown_task_is_a_value_error_listing_tasks(tmp_path: Path) -> None:
    for call in (
        lambda: parse_item("csqa", {}),
        lambda: load_examples("csqa", tmp_path / "x.json"),
        lambda: extract_answer("csqa", "answer1"),
        lambda: task_file("csqa", "test", tmp_path),
        lambda: convert_hub_row("csqa", {}),
    ):
        with pytest.raises(ValueError, match="known tasks: boolq, piqa") as info:
            call()
        assert not isinstance(info.value, DataFormatError)


def test_load_examples_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "piqa" / "test.json"
    with pytest.raises(FileNotFoundError) as info:
        load_examples("piqa", missing)
    assert str(missing) in str(info.value)
    assert "AGI-Edgerunners/LLM-Adapters" in str(info.value) and "LORADASH_DATA_DIR" in str(info.value)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"instruction": ', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.json: invalid JSON at line 1"):
        load_examples("piqa", bad_json)

    not_list = _write(tmp_path / "obj.json", {"instruction": "x"})
    with pytest.raises(DataFormatError, match="expected a JSON array"):
        load_examples("piqa", not_list)

    good = json.loads(task_file("piqa", "test", FIXTURES).read_text())
    broken = _write(tmp_path / "broken.json", [good[0], good[1], {**good[2], "output": 3}])
    with pytest.raises(DataFormatError) as info:
        load_examples("piqa", broken)
    assert (info.value.source, info.value.index, info.value.field) == (str(broken), 2, "output")
    assert str(broken) in str(info.value) and "item 2" in str(info.value)

    not_object = _write(tmp_path / "list.json", [good[0], ["a", "b"]])
    with pytest.raises(DataFormatError, match=r"item 1: expected a JSON object"):
        load_examples("piqa", not_object)


def test_data_format_error_pickles() -> None:
    err = DataFormatError("f.json", 3, "answer", "bad")
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err) and clone.field == "answer"
    assert isinstance(err, ValueError)


# --------------------------------------------------------------------------------------------------
# Mixed files and task detection


def test_detect_task() -> None:
    for task in ("boolq", "piqa", "hellaswag", "winogrande"):
        item = json.loads(task_file(task, "test", FIXTURES).read_text())[0]
        assert detect_task(item["instruction"]) == task
    # SIQA, ARC-e, ARC-c and OBQA share one template: the family is reported as SIQA.
    for task in cs.SAME_TEMPLATE_TASKS:
        item = json.loads(task_file(task, "test", FIXTURES).read_text())[0]
        assert detect_task(item["instruction"]) == "social_i_qa"
    with pytest.raises(ValueError, match="no known commonsense template"):
        detect_task("Solve: 2 + 2 = ?")


def test_load_mixed() -> None:
    ex = load_mixed(cs.mixed_file(FIXTURES))
    assert [e.task for e in ex] == [
        "boolq",
        "piqa",
        "social_i_qa",
        "hellaswag",
        "winogrande",
        "social_i_qa",
        "social_i_qa",
    ]
    assert [e.answer for e in ex] == [
        "true",
        "solution1",
        "answer1",
        "ending2",
        "option2",
        "answer3",
        "answer2",
    ]
    assert ex[3].label_text == "scrubs a plate with a sponge and rinses it."


def test_load_mixed_reports_unknown_template(tmp_path: Path) -> None:
    good = json.loads(cs.mixed_file(FIXTURES).read_text())
    path = _write(
        tmp_path / "mixed.json", [*good[:2], _item("Solve: 2 + 2 = ?\n\nAnswer format: number", "4")]
    )
    with pytest.raises(DataFormatError) as info:
        load_mixed(path)
    assert (info.value.index, info.value.field) == (2, "instruction")


# --------------------------------------------------------------------------------------------------
# Data directory


def test_task_file_layout(tmp_path: Path) -> None:
    assert task_file("ARC-Easy", "train", tmp_path) == tmp_path / "ARC-Easy" / "train.json"
    assert cs.mixed_file(tmp_path) == tmp_path / "commonsense_170k.json"
    with pytest.raises(ValueError, match="known splits: train, test"):
        task_file("piqa", "validation", tmp_path)


def test_default_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "piqa").mkdir()  # a folder with something in it (an empty one is the data hint, test_errors)
    monkeypatch.setenv("LORADASH_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    assert task_file("piqa", "test") == tmp_path / "piqa" / "test.json"


def test_default_data_dir_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORADASH_DATA_DIR", raising=False)
    if not REAL_DIR.is_dir():
        pytest.skip(f"{REAL_DIR} absent")
    assert default_data_dir().resolve() == REAL_DIR.resolve()


def test_default_data_dir_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LORADASH_DATA_DIR", raising=False)
    monkeypatch.setattr(cs, "_repo_root", lambda: tmp_path / "repo")
    with pytest.raises(FileNotFoundError) as info:
        default_data_dir()
    message = str(info.value)
    assert (
        "LORADASH_DATA_DIR" in message
        and "LLM-Adapters" in message
        and "scripts/prepare_commonsense.py" in message
    )


# --------------------------------------------------------------------------------------------------
# Answer extraction: golden strings, reference vs robust

# (task, generated text, reference-mode answer, robust-mode answer)
GOLDEN = [
    # BoolQ
    ("boolq", "the correct answer is true", "true", "true"),
    ("boolq", "the correct answer is false", "false", "false"),
    ("boolq", "the correct answer is True", None, "true"),  # reference is case-sensitive
    ("boolq", "TRUE.", None, "true"),
    ("boolq", "The answer is False, it is not true", "true", "false"),  # reference skips "False"
    ("boolq", "the claim is untrue", "true", None),  # label inside a word
    ("boolq", "that is a falsehood", "false", None),
    ("boolq", "true or false? false", "true", "true"),  # two labels: first wins
    ("boolq", "", None, None),
    ("boolq", "I cannot tell", None, None),
    # PIQA
    ("piqa", "the correct answer is solution2", "solution2", "solution2"),
    ("piqa", "Solution1", None, "solution1"),
    ("piqa", "solution2, not solution1", "solution2", "solution2"),
    ("piqa", "solution12", "solution1", None),
    ("piqa", "", None, None),
    # SIQA (reference accepts answer1..5 even though SIQA has 3 choices)
    ("social_i_qa", "the correct answer is answer3", "answer3", "answer3"),
    ("social_i_qa", "the correct answer is answer10", "answer1", None),
    ("social_i_qa", "Answer2", None, "answer2"),
    ("social_i_qa", "answer5", "answer5", "answer5"),
    ("social_i_qa", "answer6", None, None),
    ("social_i_qa", "", None, None),
    # HellaSwag
    ("hellaswag", "the correct answer is ending4", "ending4", "ending4"),
    ("hellaswag", "Ending2 is right", None, "ending2"),
    ("hellaswag", "ending3 or ending1", "ending3", "ending3"),
    ("hellaswag", "ending1s", "ending1", None),
    ("hellaswag", "ending5", None, None),
    ("hellaswag", "", None, None),
    # WinoGrande
    ("winogrande", "the correct answer is option2", "option2", "option2"),
    ("winogrande", "Option1", None, "option1"),
    ("winogrande", "option21", "option2", None),
    ("winogrande", "option1 vs option2", "option1", "option1"),
    ("winogrande", "", None, None),
    # ARC-Easy / ARC-Challenge / OBQA
    ("ARC-Easy", "the correct answer is answer1.", "answer1", "answer1"),
    ("ARC-Easy", "answer5", "answer5", "answer5"),
    ("ARC-Easy", "ANSWER4", None, "answer4"),
    ("ARC-Easy", "the correct answer is answer10", "answer1", None),
    ("ARC-Challenge", "answer4 (answer2 is wrong)", "answer4", "answer4"),
    ("ARC-Challenge", "reanswer2", "answer2", None),
    ("ARC-Challenge", "Answer3 or answer1", "answer1", "answer3"),
    ("ARC-Challenge", "", None, None),
    ("openbookqa", "the correct answer is answer2\n\n### Instruction:", "answer2", "answer2"),
    ("openbookqa", "answer_2", None, None),
    ("openbookqa", "answer3's text", "answer3", "answer3"),
    ("openbookqa", "", None, None),
]


@pytest.mark.parametrize(("task", "text", "ref", "robust"), GOLDEN)
def test_extract_answer_golden(task: str, text: str, ref: str | None, robust: str | None) -> None:
    assert extract_answer(task, text, reference=True) == ref
    assert extract_answer(task, text) == robust


def test_golden_table_covers_every_task() -> None:
    assert {row[0] for row in GOLDEN} == set(TASKS)


def test_extract_answer_matches_a_transcription_of_the_reference() -> None:
    """reference=True agrees with re.findall(alternatives)[0] on every golden string (incl. misses)."""
    import re

    for task, text, _, _ in GOLDEN:
        found = re.findall("|".join(LABELS[task]), text.strip())
        assert extract_answer(task, text, reference=True) == (found[0] if found else None)


# --------------------------------------------------------------------------------------------------
# Hub converters (no network)


def test_convert_hub_rows_reproduce_fixture_items() -> None:
    rows = json.loads((FIXTURES / "hub_rows.json").read_text())
    for task in TASKS:
        items = json.loads(task_file(task, "test", FIXTURES).read_text())
        assert len(rows[task]) == len(items)
        for row, item in zip(rows[task], items, strict=True):
            converted = convert_hub_row(task, row)
            assert converted == item
            ex = parse_item(task, converted)
            assert ex.answer == item["answer"]


def test_convert_hub_row_parses_back() -> None:
    rows = json.loads((FIXTURES / "hub_rows.json").read_text())
    ex = parse_item("hellaswag", convert_hub_row("hellaswag", rows["hellaswag"][2]))
    assert (
        ex.question == "Playing violin: A boy lifts a violin to his chin in front of a music stand. the boy"
    )
    assert ex.choices == tuple(rows["hellaswag"][2]["endings"]) and ex.label == 3
    ex = parse_item("social_i_qa", convert_hub_row("social_i_qa", rows["social_i_qa"][1]))  # label "1\n"
    assert ex.label == 0 and ex.choices[0] == "be welcoming"
    ex = parse_item("ARC-Challenge", convert_hub_row("ARC-Challenge", rows["ARC-Challenge"][0]))  # digit key
    assert ex.label == 1 and ex.label_text == "transpiration"
    ex = parse_item("boolq", convert_hub_row("boolq", rows["boolq"][1]))
    assert ex.question == "can an emperor penguin fly long distances?" and ex.label == 1


@pytest.mark.parametrize(
    ("task", "row", "needle"),
    [
        (
            "hellaswag",
            {"activity_label": "a", "ctx": "b", "endings": ["1", "2", "3", "4"], "label": ""},
            "no usable label",
        ),
        ("winogrande", {"sentence": "a _", "option1": "x", "option2": "y", "answer": ""}, "no usable label"),
        ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": -1}, "out of range"),
        (
            "social_i_qa",
            {"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c", "label": "4"},
            "out of range",
        ),
        (
            "ARC-Easy",
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "F"},
            "out of range",
        ),
        (
            "ARC-Easy",
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "?"},
            "unusable answerKey",
        ),
        ("boolq", {"question": "q", "answer": "maybe"}, "must be a bool"),
        ("openbookqa", {"question_stem": "q", "answerKey": "A"}, "lacks column 'choices'"),
    ],
)
def test_convert_hub_row_rejects(task: str, row: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        convert_hub_row(task, row)


def test_hub_sources() -> None:
    assert HUB_SOURCES["boolq"] == ("google/boolq", None)
    assert HUB_SOURCES["piqa"][0] == "ybisk/piqa"
    assert HUB_SOURCES["social_i_qa"][0] == "allenai/social_i_qa"
    assert HUB_SOURCES["hellaswag"][0] == "Rowan/hellaswag"
    assert HUB_SOURCES["winogrande"] == ("allenai/winogrande", "winogrande_xl")
    assert HUB_SOURCES["ARC-Easy"] == ("allenai/ai2_arc", "ARC-Easy")
    assert HUB_SOURCES["ARC-Challenge"] == ("allenai/ai2_arc", "ARC-Challenge")
    assert HUB_SOURCES["openbookqa"] == ("allenai/openbookqa", "main")
    assert prep.HUB_SPLITS["piqa"]["test"] == "validation" and prep.HUB_SPLITS["openbookqa"]["test"] == "test"


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, behaviour) -> list[tuple]:
    calls: list[tuple] = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return behaviour(len(calls), *args, **kwargs)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_load_hub_split_converts_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = json.loads((FIXTURES / "hub_rows.json").read_text())["winogrande"]
    calls = _fake_datasets(monkeypatch, lambda n, *a, **k: rows)
    items = load_hub_split("winogrande", "test")
    assert calls == [(("allenai/winogrande", "winogrande_xl"), {"split": "validation"})]
    assert items == json.loads(task_file("winogrande", "test", FIXTURES).read_text())


def test_load_hub_split_falls_back_to_parquet_for_script_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = json.loads((FIXTURES / "hub_rows.json").read_text())["piqa"]

    def behaviour(n: int, *args, **kwargs):
        if n == 1:
            raise RuntimeError("Dataset scripts are no longer supported, but found piqa.py")
        return rows

    calls = _fake_datasets(monkeypatch, behaviour)
    items = load_hub_split("piqa", "train")
    assert calls[1] == (("ybisk/piqa", None), {"split": "train", "revision": "refs/convert/parquet"})
    assert [i["answer"] for i in items] == ["solution2", "solution1", "solution1"]


def test_load_hub_split_other_errors_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    def behaviour(n: int, *args, **kwargs):
        raise ConnectionError("offline")

    _fake_datasets(monkeypatch, behaviour)
    with pytest.raises(ConnectionError):
        load_hub_split("boolq", "test")
    with pytest.raises(ValueError, match="known splits"):
        load_hub_split("boolq", "validation")


def test_prepare_script_writes_the_llm_adapters_layout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rows = json.loads((FIXTURES / "hub_rows.json").read_text())["boolq"]
    _fake_datasets(monkeypatch, lambda n, *a, **k: rows)
    assert prep.main(["--out", str(tmp_path), "--tasks", "boolq", "--splits", "test"]) == 0
    assert load_examples("boolq", tmp_path / "boolq" / "test.json") == load_examples(
        "boolq", task_file("boolq", "test", FIXTURES)
    )
    with pytest.raises(SystemExit) as info:
        prep.main(["--help"])
    assert info.value.code == 0


def test_write_items_round_trip(tmp_path: Path) -> None:
    items = json.loads(task_file("hellaswag", "test", FIXTURES).read_text())
    path = cs.write_items(items, tmp_path / "hellaswag" / "test.json")
    assert path == task_file("hellaswag", "test", tmp_path)
    assert [e.label for e in load_examples("hellaswag", path)] == [0, 2, 3]


# --------------------------------------------------------------------------------------------------
# Real data (/work/shared/data/commonsense, LLM-Adapters commit 81665720)


def _real_file(task: str, split: str) -> Path:
    if not REAL_DIR.is_dir():
        pytest.skip(f"{REAL_DIR} absent")
    path = task_file(task, split, REAL_DIR)
    if not path.is_file():
        pytest.skip(f"{path} absent")
    return path


@pytest.mark.parametrize(("task", "split"), sorted(REAL_COUNTS))
def test_real_file_counts_and_parse(task: str, split: str) -> None:
    path = _real_file(task, split)
    examples = load_examples(task, path)
    assert len(examples) == REAL_COUNTS[(task, split)]
    for ex in examples:
        assert ex.task == task and 0 <= ex.label < len(ex.choices)
        assert ex.output == f"the correct answer is {ex.answer}" and ex.input == ""
        assert render_instruction(task, ex.question, ex.choices) == ex.instruction
        assert extract_answer(task, ex.output, reference=True) == ex.answer


def test_every_real_file_is_known() -> None:
    if not REAL_DIR.is_dir():
        pytest.skip(f"{REAL_DIR} absent")
    present = {(p.parent.name, p.stem) for p in REAL_DIR.glob("*/*.json")}
    assert present, "shared data folder is empty"
    assert present <= set(REAL_COUNTS)


def test_real_choice_counts() -> None:
    """SIQA always has 3 choices, OBQA 4, ARC 3 to 5, so LABELS must reach answer5."""
    counts = {
        task: {len(e.choices) for e in load_examples(task, _real_file(task, "test"))}
        for task in ("social_i_qa", "openbookqa", "ARC-Easy", "ARC-Challenge")
    }
    assert counts == {
        "social_i_qa": {3},
        "openbookqa": {4},
        "ARC-Easy": {3, 4, 5},
        "ARC-Challenge": {3, 4, 5},
    }


# Hub rows of real items, written from the public originals; converting each must reproduce the shared
# file's item byte for byte (this pins the templates to the reference's own output).
REAL_HUB_ROWS = [
    ("boolq", "test", 0, {"question": "does ethanol take more energy make that produces", "answer": False}),
    (
        "piqa",
        "test",
        0,
        {
            "goal": "How do I ready a guinea pig cage for it's new occupants?",
            "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
            "you will also need to supply it with a water bottle and a food dish.",
            "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, "
            "you will also need to supply it with a water bottle and a food dish.",
            "label": 0,
        },
    ),
    (
        "piqa",
        "test",
        1,
        {
            "goal": "dresser",
            "sol1": "replace drawer with bobby pin ",
            "sol2": "finish, woodgrain with  bobby pin ",
            "label": 1,
        },
    ),
    (
        "social_i_qa",
        "test",
        0,
        {
            "context": "Tracy didn't go home that evening and resisted Riley's attacks.",
            "question": "What does Tracy need to do before this?",
            "answerA": "make a new plan",
            "answerB": "Go home and see Riley",
            "answerC": "Find somewhere to go",
            "label": "3",
        },
    ),
    (
        "ARC-Challenge",
        "test",
        0,
        {
            "id": "Mercury_7175875",
            "question": "An astronomer observes that a planet rotates faster after a meteorite impact. "
            "Which is the most likely effect of this increase in rotation?",
            "choices": {
                "text": [
                    "Planetary density will decrease.",
                    "Planetary years will become longer.",
                    "Planetary days will become shorter.",
                    "Planetary gravity will become stronger.",
                ],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "C",
        },
    ),
    (
        "ARC-Easy",
        "test",
        0,
        {
            "question": "Which statement best explains why photosynthesis is the foundation of most food webs?",
            "choices": {
                "text": [
                    "Sunlight is the source of energy for nearly all ecosystems.",
                    "Most ecosystems are found on land instead of in water.",
                    "Carbon dioxide is more available than other gases.",
                    "The producers in all ecosystems are plants.",
                ],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "A",
        },
    ),
    (
        "openbookqa",
        "test",
        0,
        {
            "id": "8-343",
            "question_stem": "A person wants to start saving money so that they can afford a nice vacation at the "
            "end of the year. After looking over their budget and expenses, they decide the best way to save "
            "money is to",
            "choices": {
                "text": [
                    "make more phone calls",
                    "quit eating lunch out",
                    "buy less with monopoly money",
                    "have lunch with friends",
                ],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "B",
        },
    ),
]


@pytest.mark.parametrize(
    ("task", "split", "index", "row"), REAL_HUB_ROWS, ids=lambda v: v if isinstance(v, str) else None
)
def test_convert_hub_row_reproduces_real_items(task: str, split: str, index: int, row: dict) -> None:
    path = _real_file(task, split)
    real = json.loads(path.read_text(encoding="utf-8"))[index]
    assert convert_hub_row(task, row) == real
