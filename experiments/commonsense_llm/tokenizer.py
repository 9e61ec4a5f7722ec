"""The tokenizer of a causal-LM run: the model's own (fast), or the reference's slow sentencepiece LlamaTokenizer.

The reference (DoRA's / Subspace-Tuning's ``finetune.py`` and ``commonsense_evaluate.py``) loads
``LlamaTokenizer.from_pretrained(base_model)`` for LLaMA-1/2 and ``AutoTokenizer`` only when the model name holds
"Llama-3". In the transformers it pins (4.36) ``LlamaTokenizer`` is the slow class: sentencepiece splits the text,
transformers adds BOS. ``model.slow_tokenizer`` selects that encoding; by default a run uses ``AutoTokenizer`` (the
fast, ``tokenizers`` form of the same vocabulary, which differs after special tokens and on leading spaces).

Transformers 5 has no slow class, so ``SentencePieceLlamaTokenizer`` below is that encoding on sentencepiece's
public ``SentencePieceProcessor``: the text is split at the special tokens' strings, each piece of text is
sentencepiece's, BOS goes first; ``legacy`` (the checkpoint's ``tokenizer_config.json``, True when unset) False
drops the dummy prefix after a special token, as 4.36 did. Decoding is 4.36's ``convert_tokens_to_string``. It has
the part of a transformers tokenizer the family calls (``__call__`` on one text or a list, ``decode``,
``batch_decode``, the special ids, ``len``), not padding or tensors; lm-eval's loglikelihood protocol needs a
transformers tokenizer and is refused with it (commonsense_llm/family.py). The record names the class that ran
(``tokenizer_identity``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SentencePieceLlamaTokenizer", "load_tokenizer", "tokenizer_identity"]

SPIECE_UNDERLINE = "▁"


def load_tokenizer(path: str | os.PathLike[str], *, slow: bool = False) -> Any:
    """The tokenizer in the folder (or hub id) `path`: ``AutoTokenizer``'s choice, or with `slow` the reference's
    slow sentencepiece ``LlamaTokenizer`` (needs the folder's ``tokenizer.model``; LLaMA-1/2 only)."""
    if not slow:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(os.fspath(path))
    return SentencePieceLlamaTokenizer.from_pretrained(path)


def tokenizer_identity(tokenizer: Any, *, slow: bool) -> dict[str, Any]:
    """What a record says about the tokenizer that ran: its class, whether it is the fast (`tokenizers`) or the
    slow (sentencepiece) form, the setting that chose it, and the settings that change its encoding."""
    cls = type(tokenizer)
    return {
        "class": cls.__name__,
        "module": cls.__module__,
        "is_fast": bool(tokenizer.is_fast),
        "slow_tokenizer": slow,  # model.slow_tokenizer
        "legacy": getattr(tokenizer, "legacy", None),
        "add_bos_token": getattr(tokenizer, "add_bos_token", None),
        "vocab_size": len(tokenizer),
    }


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes a special token as a string or as an AddedToken dict
    return value.get("content") if isinstance(value, dict) else value


class SentencePieceLlamaTokenizer:
    """transformers 4.36's slow ``LlamaTokenizer`` (encoding and decoding) on sentencepiece's processor."""

    is_fast = False

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        *,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        legacy: bool | None = None,
    ) -> None:
        import sentencepiece as spm

        # An unset `legacy` is the legacy behaviour (checkpoints saved before the flag existed omit it).
        self.legacy = True if legacy is None else bool(legacy)
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        proto = Path(model_file).read_bytes()
        if not self.legacy:  # 4.36 loads the model without sentencepiece's dummy prefix when not legacy
            from sentencepiece import sentencepiece_model_pb2

            model = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated code
            model.ParseFromString(proto)
            model.normalizer_spec.add_dummy_prefix = False
            proto = model.SerializeToString()
        self.sp_model = spm.SentencePieceProcessor(model_proto=proto)
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = (
            bos_token,
            eos_token,
            unk_token,
            pad_token,
        )
        self.bos_token_id, self.eos_token_id, self.unk_token_id = map(
            self._id, (bos_token, eos_token, unk_token)
        )
        self.pad_token_id = None if pad_token is None else self._id(pad_token)
        self.all_special_tokens = [t for t in (bos_token, eos_token, unk_token, pad_token) if t is not None]
        self.all_special_ids = [self._id(t) for t in self.all_special_tokens]
        longest_first = sorted(set(self.all_special_tokens), key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
        self._unk_length = len(self.sp_model.encode(unk_token))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> SentencePieceLlamaTokenizer:
        """The folder's ``tokenizer.model`` with the settings of its ``tokenizer_config.json``."""
        folder = Path(path)
        if not (folder / "tokenizer.model").is_file():
            raise ValueError(f"{path}: the slow tokenizer needs the folder's tokenizer.model (sentencepiece)")
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        tokens = {k: _token_text(config[k]) for k in ("bos_token", "eos_token", "unk_token") if config.get(k)}
        return cls(
            folder / "tokenizer.model",
            **tokens,
            pad_token=_token_text(config.get("pad_token")) or None,
            add_bos_token=config.get("add_bos_token", True),
            add_eos_token=config.get("add_eos_token", False),
            legacy=config.get("legacy"),
        )

    def _id(self, token: str) -> int:
        index = self.sp_model.piece_to_id(token)
        if self.sp_model.id_to_piece(index) != token:
            raise ValueError(f"special token {token!r} is not in the sentencepiece vocabulary")
        return int(index)

    def __len__(self) -> int:
        return int(self.sp_model.get_piece_size())

    def _encode_text(self, text: str) -> list[int]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return list(self.sp_model.encode(text))
        # not legacy: keep the leading space (sentencepiece would strip it) by encoding after the unk string
        return list(self.sp_model.encode(self.unk_token + text))[self._unk_length :]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """4.36's ids: the text split at special tokens, sentencepiece's ids of each piece, BOS (and EOS)."""
        if not self.legacy and text:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        parts = [p for p in self._split.split(text) if p]
        if (
            not self.legacy
            and len(parts) > 1
            and parts[0] == SPIECE_UNDERLINE
            and parts[1] in self.all_special_tokens
        ):
            parts = parts[1:]  # the prefix of a text that opens with a special token
        ids: list[int] = []
        for part in parts:
            ids += [self._id(part)] if part in self.all_special_tokens else self._encode_text(part)
        if not add_special_tokens:
            return ids
        return [self.bos_token_id] * self.add_bos_token + ids + [self.eos_token_id] * self.add_eos_token

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        truncation: bool = False,
        max_length: int | None = None,
        padding: bool = False,
        return_tensors: None = None,
        add_special_tokens: bool = True,
    ) -> dict[str, Any]:
        """``input_ids`` and ``attention_mask`` of one text or a list, truncated on the right to `max_length`
        (special tokens kept, as transformers truncates)."""
        if padding or return_tensors is not None:
            raise ValueError(f"{type(self).__name__} returns unpadded lists only")
        texts = [text] if isinstance(text, str) else list(text)
        rows = []
        for t in texts:
            ids = self.encode(t, add_special_tokens=False)
            if truncation and max_length is not None:
                n_special = (self.add_bos_token + self.add_eos_token) if add_special_tokens else 0
                ids = ids[: max(max_length - n_special, 0)]
            if add_special_tokens:
                ids = (
                    [self.bos_token_id] * self.add_bos_token + ids + [self.eos_token_id] * self.add_eos_token
                )
            rows.append(ids)
        masks = [[1] * len(ids) for ids in rows]
        if isinstance(text, str):
            return {"input_ids": rows[0], "attention_mask": masks[0]}
        return {"input_ids": rows, "attention_mask": masks}

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """4.36's ``convert_tokens_to_string``: sentencepiece decodes the runs between special tokens, the first
        piece's prefix space is dropped, and a legacy tokenizer puts a space before a special token."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        special = set(self.all_special_ids)
        tokens = [self.sp_model.id_to_piece(i) for i in ids if not (skip_special_tokens and i in special)]
        if not tokens:
            return ""
        if tokens[0].startswith(SPIECE_UNDERLINE):
            tokens[0] = tokens[0][1:]
        out, prev_is_special = "", False
        current: list[str] = []
        for i, token in enumerate(tokens):
            if token in self.all_special_tokens:
                if not prev_is_special and i != 0 and self.legacy:
                    out += " "
                out += self.sp_model.decode(current) + token
                prev_is_special, current = True, []
            else:
                current.append(token)
                prev_is_special = False
        return out + self.sp_model.decode(current)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in sequences]
