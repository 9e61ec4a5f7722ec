"""The reference's slow sentencepiece LlamaTokenizer (`model.slow_tokenizer`) beside the fast one, on a sentencepiece
model trained here and saved with a tiny LLaMA built from a config (nothing downloaded)."""

from __future__ import annotations

import io

import pytest
import sentencepiece as spm

from experiments.commonsense_llm.family import CommonsenseCausalRun
from experiments.commonsense_llm.prompts import build_prompt
from experiments.commonsense_llm.tokenizer import load_tokenizer
from experiments.harness.config import ConfigError, config_hash, load_experiment, with_overrides
from experiments.harness.profiles import load_profile
from experiments.harness.records import validate_record
from experiments.harness.train import run
from tests.helpers import build_tiny_llama, fixture_examples, tiny_config

BOS = 1


def protocol_texts() -> list[str]:
    """The texts a run tokenizes: both prompt templates, with and without the answer, and the answers."""
    examples = fixture_examples()
    prompts = [build_prompt(e.instruction, e.input, out, template=t)
               for e in examples for t in ("train", "eval") for out in (None, e.output)]  # fmt: skip
    return prompts + [e.output for e in examples]


@pytest.fixture(scope="module")
def sp_model_dir(tmp_path_factory):
    """A LLaMA-style sentencepiece model (BPE with byte fallback; unk, bos, eos = 0, 1, 2) trained on the fixture
    prompts, in a folder with a LlamaTokenizer's files and a tiny LLaMA, as a hub LLaMA-2 folder is laid out."""
    from transformers import LlamaTokenizer

    lines = [line for text in protocol_texts() for line in text.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=500, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", num_threads=1, minloglevel=2,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("sp-llama")
    (path / "tokenizer.model").write_bytes(model.getvalue())
    # the fast class from transformers 5 on (the slow one before), adding BOS as LLaMA checkpoints declare
    tok = LlamaTokenizer.from_pretrained(path, add_bos_token=True)
    tok.save_pretrained(path)
    build_tiny_llama(len(tok)).save_pretrained(path)
    assert (path / "tokenizer.model").is_file()
    return path


def test_slow_tokenizer_is_sentencepiece_plus_bos(sp_model_dir):
    """The slow tokenizer's ids are the reference's: BOS, then sentencepiece's pieces of the text (legacy, the
    behaviour of a checkpoint that does not set it); decoding is sentencepiece's."""
    sp = spm.SentencePieceProcessor(model_file=str(sp_model_dir / "tokenizer.model"))
    slow = load_tokenizer(sp_model_dir, slow=True)
    fast = load_tokenizer(sp_model_dir)
    assert not slow.is_fast and fast.is_fast and type(slow) is not type(fast)
    assert slow.legacy is True and len(slow) == sp.get_piece_size() == len(fast)
    for text in protocol_texts():
        ids = sp.encode(text)
        assert slow(text)["input_ids"] == [BOS, *ids]
        assert slow(text, truncation=True, max_length=12)["input_ids"] == [BOS, *ids[:11]]
        assert slow.decode([BOS, *ids], skip_special_tokens=True) == sp.decode(ids)
    # text after a special token and a leading space: where the fast tokenizer differs from the reference
    assert slow("Hello </s> x")["input_ids"] == [BOS, *sp.encode("Hello "), 2, *sp.encode(" x")]
    assert slow(" x")["input_ids"] == [BOS, *sp.encode(" x")]


def test_family_loads_and_records_the_tokenizer_the_setting_names(sp_model_dir):
    cfg = tiny_config("llama-7b-lora-r4", sp_model_dir)
    fast = CommonsenseCausalRun(cfg)
    slow = CommonsenseCausalRun(with_overrides(cfg, model={"slow_tokenizer": True}))
    assert not slow.tokenizer.is_fast and fast.tokenizer.is_fast
    names = {r.identity()["tokenizer"]["class"] for r in (slow, fast)}
    assert names == {type(slow.tokenizer).__name__, type(fast.tokenizer).__name__} and len(names) == 2
    ident = slow.identity()["tokenizer"]
    assert ident["slow_tokenizer"] is True and ident["is_fast"] is False and ident["legacy"] is True
    assert fast.identity()["tokenizer"] | {"class": None, "module": None} != ident | {
        "class": None,
        "module": None,
    }
    assert all(f["input_ids"][0] == BOS for r in (slow, fast) for f in r._train_features)


def test_slow_tokenizer_run_records_its_class(sp_model_dir, tmp_path):
    cfg = tiny_config("llama-7b-loradash-r4", sp_model_dir, max_new_tokens=4, batch1_check_items=0)
    cfg = with_overrides(cfg, model={"slow_tokenizer": True})
    rec = run(cfg, seed=0, lr=1e-3, profile="tiny", results_dir=tmp_path, progress=False)
    assert rec["status"] == "complete" and validate_record(rec) == []
    assert rec["identity"]["tokenizer"]["class"] == type(load_tokenizer(sp_model_dir, slow=True)).__name__
    assert (
        rec["identity"]["tokenizer"]["is_fast"] is False and rec["config"]["model"]["slow_tokenizer"] is True
    )


def test_paper_profile_uses_the_slow_tokenizer_for_llama_1_and_2_only():
    p = load_profile("commonsense_llm", "paper")
    for name in p.experiments:
        cfg = load_experiment("commonsense_llm", name, profile_overrides=p.overrides, profile_source=p.source)
        assert cfg.model.slow_tokenizer is not name.startswith("llama3-"), name
    tiny = load_profile("commonsense_llm", "tiny")
    cfg = load_experiment("commonsense_llm", "llama-7b-lora-r4", profile_overrides=tiny.overrides)
    assert cfg.model.slow_tokenizer is False  # tiny models ship a fast tokenizer only


def test_slow_tokenizer_setting_in_the_hash_only_when_set():
    """Records committed before the setting existed stay current: False (every earlier run's tokenizer) is left
    out of the hash (tests/test_committed_results.py checks the committed ones)."""
    cfg = load_experiment("commonsense_llm", "llama-7b-lora-r4")
    assert cfg.model.slow_tokenizer is False
    assert config_hash(with_overrides(cfg, model={"slow_tokenizer": True})) != config_hash(cfg)
    with pytest.raises(
        ConfigError, match="model.slow_tokenizer: family commonsense has no slow-tokenizer option"
    ):
        load_experiment("commonsense", "lora-r1", profile_overrides={"model": {"slow_tokenizer": True}})


def test_slow_tokenizer_is_refused_with_the_loglikelihood_protocol():
    """lm-eval wraps a transformers tokenizer; the sentencepiece one has only the part the generation protocol calls."""
    over = {"model": {"slow_tokenizer": True}, "eval": {"protocols": ["generation", "loglikelihood"]}}
    with pytest.raises(ConfigError, match="loglikelihood protocol needs the fast tokenizer"):
        load_experiment("commonsense_llm", "llama-7b-lora-r4", profile_overrides=over)


def test_non_legacy_checkpoint_has_no_dummy_prefix_after_a_special_token(sp_model_dir, tmp_path):
    """`legacy: false` in tokenizer_config.json (as LLaMA-2 sets it): the text after a special token gets no "▁"."""
    import json
    import shutil

    folder = shutil.copytree(sp_model_dir, tmp_path / "non-legacy")
    config = json.loads((folder / "tokenizer_config.json").read_text()) | {"legacy": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok, legacy = load_tokenizer(folder, slow=True), load_tokenizer(sp_model_dir, slow=True)
    assert tok.legacy is False
    ids, old = tok("Hello</s>x")["input_ids"], legacy("Hello</s>x")["input_ids"]
    assert ids[: ids.index(2)] == old[: old.index(2)] == legacy("Hello")["input_ids"]
    pieces = [tok.sp_model.id_to_piece(i) for i in (ids[ids.index(2) + 1], old[old.index(2) + 1])]
    assert not pieces[0].startswith("▁") and pieces[1].startswith("▁")
