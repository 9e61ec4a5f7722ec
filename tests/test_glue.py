"""The GLUE family: loaders on the real files and on malformed ones, the hub schema, GLUE's metrics, and the
paper path (DeBERTa target modules, epochs) end to end on a tiny DeBERTa-v2 built from a config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.glue.data import (
    GlueFormatError,
    convert_hub_row,
    default_data_dir,
    load_hub_split,
    load_tsv,
    rows_in_hub_schema,
    task_file,
)
from experiments.glue.metrics import task_metrics
from experiments.harness.config import load_experiment, with_overrides
from experiments.harness.profiles import load_profile
from experiments.harness.records import validate_record
from experiments.harness.train import run

# rows and labels of the shared files (../shared/data/glue/README.md)
SIZES = {
    "cola": (8551, 1043),
    "sst2": (67349, 872),
    "mrpc": (3668, 408),
    "rte": (2490, 277),
    "stsb": (5749, 1500),
}


@pytest.mark.parametrize("task", sorted(SIZES))
def test_real_files_parse_with_the_official_counts(task):
    d = default_data_dir()
    train, dev = load_tsv(task, task_file(task, "train", d)), load_tsv(task, task_file(task, "test", d))
    assert (len(train), len(dev)) == SIZES[task]
    assert [e.id for e in dev] == list(range(len(dev)))
    if task == "cola":
        assert sum(e.label for e in train) == 6023 and len(train[0].texts) == 1
    if task == "rte":  # hub encoding: 0 = entailment
        assert sum(e.label == 0 for e in train) == 1249
    if task == "mrpc":  # the header's byte-order mark does not leak into the data
        assert sum(e.label for e in train) == 2474 and not train[0].texts[0].startswith("\ufeff")
    if task == "stsb":
        assert (
            isinstance(dev[0].label, float)
            and 0 <= min(e.label for e in dev) <= max(e.label for e in dev) <= 5
        )


@pytest.mark.parametrize(
    "task,content,match",
    [
        ("sst2", "sentence\tlabel\na fine film\t1\nbad\t2\n", r"train.tsv:3: label: '2' is not one of 0..1"),
        ("sst2", "sentence\tlabel\na fine film\n", r"train.tsv:2: <row>: 1 tab-separated fields, expected 2"),
        ("rte", "index\ts1\ts2\tlabel\n0\tA.\tB.\tmaybe\n", r"train.tsv:2: label: 'maybe' is not one of"),
        (
            "stsb",
            "h\th\th\th\th\th\th\th\th\th\n0\tg\tf\ty\to\ts\ts\tA\tB\tfive\n",
            r"train.tsv:2: label: not a number",
        ),
        ("stsb", "h\th\th\th\th\th\th\th\th\th\n0\tg\tf\ty\to\ts\ts\tA\tB\t7.5\n", r"outside \[0, 5\]"),
        ("cola", "gj04\t1\t\t  \n", r"train.tsv:1: column 3: empty text"),
        ("sst2", "sentence\tlabel\n", r"train.tsv:1: <file>: no data rows"),
        ("mrpc", "", r"train.tsv:1: <file>: no data rows"),
    ],
)
def test_malformed_files_name_file_line_and_field(tmp_path, task, content, match):
    path = tmp_path / "train.tsv"
    path.write_text(content)
    with pytest.raises(GlueFormatError, match=match):
        load_tsv(task, path)


def test_wrong_encoding_and_missing_file(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\n\xff\xfe bad\t1\n")
    with pytest.raises(GlueFormatError, match="not UTF-8"):
        load_tsv("sst2", path)
    with pytest.raises(FileNotFoundError, match="GLUE cola: no file"):
        load_tsv("cola", tmp_path / "nope.tsv")


def test_hub_rows_give_the_same_examples_as_the_files(tmp_path):
    d = default_data_dir()
    for task in ("rte", "mrpc", "stsb", "cola"):
        local = load_tsv(task, task_file(task, "test", d))[:20]
        rows = rows_in_hub_schema(task, local)
        assert [convert_hub_row(task, r, i) for i, r in enumerate(rows)] == local
    # through `datasets`, from files in the hub's schema (what nyu-mll/glue serves)
    local = load_tsv("rte", task_file("rte", "test", d))[:12]
    path = tmp_path / "validation.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows_in_hub_schema("rte", local)) + "\n")
    assert load_hub_split("rte", "test", path="json", data_files={"validation": str(path)}) == local
    with pytest.raises(GlueFormatError, match="label: -1 is not a valid label"):
        convert_hub_row("rte", {"sentence1": "a", "sentence2": "b", "label": -1, "idx": 0}, 0)
    with pytest.raises(GlueFormatError, match="sentence2: missing column"):
        convert_hub_row("mrpc", {"sentence1": "a", "label": 1}, 3)


def test_metrics_are_glues():
    y = np.array([1, 0, 1, 1, 0, 1])
    p = np.array([1, 0, 0, 1, 1, 1])
    m = task_metrics("cola", y, p)
    assert m["glue_score"] == m["mcc"] == pytest.approx((3 * 1 - 1 * 1) / np.sqrt(4 * 2 * 4 * 2))
    m = task_metrics("mrpc", y, p)
    assert m["f1"] == pytest.approx(0.75) and m["glue_score"] == pytest.approx((0.75 + 4 / 6) / 2)
    s = task_metrics("stsb", np.array([0.0, 1.0, 2.0, 5.0]), np.array([0.1, 0.9, 2.5, 3.0]))
    assert s["spearman"] == pytest.approx(1.0) and s["glue_score"] == pytest.approx((s["pearson"] + 1) / 2)
    assert task_metrics("sst2", y, p) == {
        "accuracy": pytest.approx(4 / 6),
        "glue_score": pytest.approx(4 / 6),
    }


@pytest.fixture(scope="module")
def tiny_deberta_dir(tmp_path_factory):
    """A 2-layer DeBERTa-v2 (relative attention, DeBERTa's module names) with the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    from experiments.harness.loading import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded:all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    cfg = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=48, max_position_embeddings=64, relative_attention=True,
                          position_buckets=16, pos_att_type=["p2c", "c2p"], type_vocab_size=0,
                          pooler_hidden_size=32)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-deberta")
    DebertaV2ForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("experiment,task", [("loradash-r2", "cola"), ("lora-r2", "stsb"), ("full", "mrpc")])
def test_paper_path_end_to_end_on_a_tiny_deberta(tiny_deberta_dir, tmp_path, experiment, task):
    p = load_profile("glue", "tiny")
    cfg = load_experiment("glue", experiment, profile_overrides=p.overrides, profile_source=p.source,
                          method_overrides=p.method_overrides, task=task, task_overrides=p.tasks[task])  # fmt: skip
    paper = load_profile("glue", "paper")
    assert p.overrides["model"]["target_modules"] == paper.overrides["model"]["target_modules"]
    cfg = with_overrides(cfg, model={"name": str(tiny_deberta_dir)})
    rec = run(cfg, seed=0, lr=1e-3, profile="tiny", results_dir=tmp_path, progress=False)
    assert rec["status"] == "complete" and validate_record(rec, "glue_score") == []
    assert rec["max_steps"] == 4  # 1 epoch of 32 examples in batches of 8
    assert rec["task"] == task and set(rec["test"]["per_task"]) == {task}
    items = rec["test"]["per_task"][task]["items"]
    assert len(items["ids"]) == len(items["labels"]) == len(items["predictions"]) == 24
    if experiment == "loradash-r2":
        d = rec["diagnostics"]
        assert d["launch_step"] == 2 and d["launched_layers"] == d["num_layers"] == 2 * 6
    if experiment != "full":
        assert rec["param_counts"]["head"] > 0  # pooler + classifier, counted apart
