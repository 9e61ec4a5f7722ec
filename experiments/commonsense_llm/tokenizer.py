"""The tokenizer of a causal-LM run: the model's own (fast), or the reference's slow sentencepiece LlamaTokenizer.

The reference (DoRA's / Subspace-Tuning's ``finetune.py`` and ``commonsense_evaluate.py``) loads
``LlamaTokenizer.from_pretrained(base_model)`` for LLaMA-1/2 and ``AutoTokenizer`` only when the model name holds
"Llama-3" (LLaMA-3's tokenizer is a byte-level BPE with no sentencepiece form). In the transformers of its time
``LlamaTokenizer`` is the slow class: sentencepiece splits the text, transformers adds BOS. ``model.slow_tokenizer``
selects it; by default a run uses ``AutoTokenizer`` (the fast, ``tokenizers`` form of the same vocabulary).

Transformers 5 removed the slow classes: its ``LlamaTokenizer`` is the fast one and ``AutoTokenizer`` ignores
``use_fast=False``. On 5.x the slow tokenizer is ``SentencePieceLlamaTokenizer`` below: the slow class of
transformers 4.36 (the version the reference pins in DoRA's ``requirements.txt``) on transformers' sentencepiece
backend, with its encoding (sentencepiece's pieces, BOS first, ``legacy`` as the checkpoint's
``tokenizer_config.json`` sets it, True when unset) and its decoding. Compared once with 4.36 and 4.57 on the
protocol's prompts, special tokens, leading spaces, byte fallback and 200 random id sequences: the same ids and
texts (4.57 alone adds a space after a special token that opens a decoded text when the next piece has no "▁").
On 4.x the library's own slow ``LlamaTokenizer`` is used. Either way the record names the class that ran
(``tokenizer_identity``).
"""

from __future__ import annotations

import os
from typing import Any

import transformers

__all__ = ["load_tokenizer", "tokenizer_identity"]

SPIECE_UNDERLINE = "▁"
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def load_tokenizer(path: str | os.PathLike[str], *, slow: bool = False) -> Any:
    """The tokenizer in the folder (or hub id) `path`: ``AutoTokenizer``'s choice, or with `slow` the reference's
    slow sentencepiece ``LlamaTokenizer`` (needs the folder's ``tokenizer.model``; LLaMA-1/2 only)."""
    path = os.fspath(path)
    if not slow:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    if TRANSFORMERS_MAJOR < 5:
        from transformers import LlamaTokenizer  # before 5.0: the slow sentencepiece class (the reference's)

        tok = LlamaTokenizer.from_pretrained(path)
    else:
        tok = SentencePieceLlamaTokenizer.from_pretrained(path)
    if tok.is_fast or getattr(tok, "sp_model", None) is None:
        raise ValueError(
            f"{path}: the slow tokenizer did not load a sentencepiece model ({type(tok).__name__})"
        )
    return tok


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


if TRANSFORMERS_MAJOR >= 5:  # before 5.0 transformers has the slow class itself
    from transformers.tokenization_utils_base import AddedToken
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    class SentencePieceLlamaTokenizer(SentencePieceBackend):
        """transformers 4.36's slow ``LlamaTokenizer`` on the 5.x sentencepiece backend: its ``tokenize``, BOS/EOS,
        ``legacy`` and ``convert_tokens_to_string`` (the backend has its ``_tokenize``)."""

        vocab_files_names = {"vocab_file": "tokenizer.model"}

        def __init__(
            self,
            vocab_file: str,
            unk_token: str | AddedToken = "<unk>",
            bos_token: str | AddedToken = "<s>",
            eos_token: str | AddedToken = "</s>",
            pad_token: str | AddedToken | None = None,
            add_bos_token: bool = True,
            add_eos_token: bool = False,
            clean_up_tokenization_spaces: bool = False,
            legacy: bool | None = None,
            **kwargs: Any,
        ) -> None:
            def special(tok: Any) -> Any:
                return AddedToken(tok, normalized=False, special=True) if isinstance(tok, str) else tok

            # An unset `legacy` is the legacy behaviour (checkpoints saved before the flag existed omit it).
            self.legacy = True if legacy is None else legacy
            self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
            # 4.36 always adds the prefix space (later versions made it a setting that LLaMA-1/2 leave on)
            for key in ("from_slow", "add_prefix_space"):
                kwargs.pop(key, None)
            super().__init__(
                vocab_file=vocab_file,
                unk_token=special(unk_token),
                bos_token=special(bos_token),
                eos_token=special(eos_token),
                pad_token=special(pad_token),
                add_bos_token=add_bos_token,
                add_eos_token=add_eos_token,
                clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                legacy=self.legacy,  # the backend drops sentencepiece's dummy prefix when False, as 4.36 did
                **kwargs,
            )

        def tokenize(self, text: str, **kwargs: Any) -> list[str]:
            # without `legacy`: a prefix "▁" (the dummy prefix), dropped when the first token is special
            if self.legacy or len(text) == 0:
                return super().tokenize(text, **kwargs)
            tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), **kwargs)
            if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
                tokens = tokens[1:]
            return tokens

        def build_inputs_with_special_tokens(
            self, token_ids_0: list[int], token_ids_1: list[int] | None = None
        ) -> list[int]:
            bos = [self.bos_token_id] if self.add_bos_token else []
            eos = [self.eos_token_id] if self.add_eos_token else []
            out = bos + token_ids_0 + eos
            return out if token_ids_1 is None else out + bos + token_ids_1 + eos

        def get_special_tokens_mask(
            self,
            token_ids_0: list[int],
            token_ids_1: list[int] | None = None,
            already_has_special_tokens: bool = False,
        ) -> list[int]:
            if already_has_special_tokens:
                return super().get_special_tokens_mask(
                    token_ids_0, token_ids_1, already_has_special_tokens=True
                )
            bos = [1] if self.add_bos_token else []
            eos = [1] if self.add_eos_token else []
            out = bos + [0] * len(token_ids_0) + eos
            return out if token_ids_1 is None else out + bos + [0] * len(token_ids_1) + eos

        def convert_tokens_to_string(self, tokens: list[str]) -> str:
            # sentencepiece decodes the runs between special tokens (bytes fall back, "▁" -> " "); the prefix
            # space of the first piece is dropped
            if not tokens:
                return ""
            tokens = list(tokens)
            if tokens[0].startswith(SPIECE_UNDERLINE):
                tokens[0] = tokens[0][1:]
            current: list[str] = []
            out = ""
            prev_is_special = False
            specials = set(self.all_special_tokens)
            for i, token in enumerate(tokens):
                if token in specials:
                    if not prev_is_special and i != 0 and self.legacy:
                        out += " "
                    out += self.sp_model.decode(current) + token
                    prev_is_special = True
                    current = []
                else:
                    current.append(token)
                    prev_is_special = False
            return out + self.sp_model.decode(current)
