"""PE-Core's text tokenizer without torch: open_clip's token ids from a Hugging Face `tokenizers` file.

open_clip's SimpleTokenizer lives in a module that imports torch, so a process that only tokenizes text (a client, a
text-only encoder behind ONNX) would pay for torch to get ids. `tokenizer_json` turns open_clip's own vocabulary and
merges into a `tokenizers` file once, at model-export time; `PETokenizer` reads that file at run time and gives the ids
open_clip gives, with numpy, ftfy, regex and `tokenizers` only.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import ftfy
import numpy as np
import regex
from tokenizers import Tokenizer, models, pre_tokenizers, processors

START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
START_ID = 49406
END_ID = 49407

# open_clip's split rule, kept in its exact spelling so `tokenizer_json` can check it against open_clip's own and fail
# the export if open_clip ever changes it. It runs here, in Python, rather than as a `tokenizers` Split: Oniguruma's
# Unicode tables and case folding are not the `regex` module's, and a special token counts only where a match starts
# ("!<end_of_text>" is punctuation), which the tokenizers library's added-token matching cannot express.
_SPLIT = regex.compile(
    rf"""{START_OF_TEXT}|{END_OF_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+""",
    regex.IGNORECASE,
)


def clean(text: str) -> str:
    """open_clip's "lower" cleaning for PE-Core, in Python because its results are defined by ftfy, `html` and Python's
    own Unicode tables (str.split's whitespace, str.lower's final sigma), which no `tokenizers` normalizer reproduces.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def split(text: str) -> str:
    """The pre-tokens of already-cleaned text, one space between them: no piece holds a space, and one string a text
    crosses into Rust faster than a list of pieces does (`is_pretokenized` costs a sequence per piece).
    """
    return " ".join(_SPLIT.findall(text))


def tokenizer_json(context_length: int) -> str:
    """A `tokenizers` file for PE-Core's text tower, built from the vocabulary open_clip itself loads, so the ids come
    from the source of truth rather than from a copy of its file-slicing rules. Needs open_clip (hence torch): call it
    at export time and ship the string.
    """
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer(context_length=context_length, clean="lower")
    if (reference.pat.pattern, reference.pat.flags) != (_SPLIT.pattern, _SPLIT.flags):
        raise RuntimeError("open_clip's pre-tokenizer pattern changed; PETokenizer would no longer match it")
    if (reference.sot_token_id, reference.eot_token_id) != (START_ID, END_ID):
        raise RuntimeError("open_clip's start/end token ids changed")
    vocab = dict(reference.encoder)
    merges = sorted(reference.bpe_ranks, key=reference.bpe_ranks.__getitem__)

    # No unknown token: every byte and every byte with "</w>" is in the vocabulary, so nothing can fall out.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
    # Input arrives cleaned and split (see `clean`, `split`): nothing is left to normalize, and the pre-tokenizer only
    # cuts at the spaces between pieces and maps each piece's UTF-8 bytes to the printable stand-ins the vocabulary is
    # written in (GPT-2's table, as CLIP's).
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", "removed"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    # A piece that is exactly a special token's text is that token; no piece holds one otherwise (letters only come
    # in runs of letters), and none spans a space.
    tokenizer.add_special_tokens([START_OF_TEXT, END_OF_TEXT])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START_OF_TEXT} $A {END_OF_TEXT}",
        special_tokens=[(START_OF_TEXT, START_ID), (END_OF_TEXT, END_ID)],
    )
    _fix_length(tokenizer, context_length)
    return tokenizer.to_str()


def _fix_length(tokenizer: Tokenizer, context_length: int) -> None:
    """Truncating the pieces' ids to context_length - 2 before the start and end tokens are added is open_clip's rule
    (keep the first context_length ids, then overwrite the last with the end token); it pads with id 0.
    """
    if context_length < 2:
        raise ValueError(f"context_length must leave room for the start and end tokens, got {context_length}")
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=0, pad_token=tokenizer.id_to_token(0) or "!")


class PETokenizer:
    """open_clip's PE-Core tokenizer, id for id, for processes that must not import torch."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        _fix_length(tokenizer, context_length)
        self._tokenizer = tokenizer
        self.context_length = context_length

    @classmethod
    def from_json(cls, text: str, context_length: int) -> PETokenizer:
        """The context length is given again because it is the model's, not the file's: one file serves all variants."""
        return cls(Tokenizer.from_str(text), context_length)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int) -> PETokenizer:
        return cls.from_json(Path(path).read_text(encoding="utf-8"), context_length)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), context_length) int64 ids, as `open_clip.get_tokenizer(name)(texts).numpy()`; a lone string is
        one text, as open_clip takes it, not a sequence of characters.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.context_length), dtype=np.int64)
        encodings = self._tokenizer.encode_batch_fast([split(clean(t)) for t in texts])
        return np.array([e.ids for e in encodings], dtype=np.int64)
