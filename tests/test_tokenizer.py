"""The torch-free tokenizer gives open_clip's ids, on a corpus built to hit every step of open_clip's pipeline: ftfy,
the double HTML unescape, whitespace and case, the split rule (letters, single digits, contractions, punctuation
runs, special tokens where a match starts), the byte-level BPE, truncation and padding.
"""

from __future__ import annotations

import random
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.model.tokenizer import END_ID, START_ID, PETokenizer, tokenizer_json

ROOT = Path(__file__).resolve().parents[1]

CAPTION_WORDS = (
    "a photo of the cat dog sitting on red blue green sofa beach mountain car driving at night sunset two people "
    "walking in park with an umbrella close-up portrait vintage painting children playing football street market "
    "bicycle airplane flying over city skyline bowl soup wooden table snow covered forest"
)
WORDS = tuple(CAPTION_WORDS.split())
CONTRACTIONS = ("it's", "don't", "we're", "i've", "i'm", "you'll", "he'd", "IT'S", "DON'T", "We'Re", "cat's", "'s", "'")
APOSTROPHES = "'\u2019\u2018\u02bc\uff07`\u00b4\u2032\u201b"
PUNCT = string.punctuation + "\u201c\u201d\u00ab\u00bb\u2026\u2014\u2013\u00a1\u00bf\u00b7\u2022\u3002\uff01\u00a7"
NUMBERS = ("0", "7", "42", "3.14", "1,000,000", "2nd", "1990s", "\u00bd", "x\u00b2", "\u0663\u0664", "\u2460", "\u216b")
NUMBERS += ("\uff11\uff12\uff13", "\u0966\u096f", "1e-9", "-273.15\u00b0c", "12:30pm", "#1", "$9.99", "50%")
EMOJI = ("\U0001f600", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1eb\U0001f1f7")
EMOJI += ("\u2764\ufe0f", "\U0001f408\u200d\u2b1b", "\u263a", "\U0001fae0", "\U0001f9d1\U0001f3ff\u200d\U0001f4bb")
SCRIPTS = (
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e",
    "na\u00efve \u00c5ngstr\u00f6m \u00d8resund",
    "Stra\u00dfe STRASSE \u1e9e",
    "\u0130stanbul \u0131\u015f\u0131k",
    "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 \u03a3\u039f\u03a6\u0399\u0391\u03a3",
    "\u6771\u4eac\u306e\u732b",
    "\u4e00\u53ea\u732b\u5728\u6c99\u53d1\u4e0a",
    "\uace0\uc591\uc774",
    "\u30cd\u30b3\u304c\u3044\u308b",
    "\u0642\u0637\u0629 \u0639\u0644\u0649 \u0627\u0644\u0623\u0631\u064a\u0643\u0629",
    "\u05d7\u05ea\u05d5\u05dc",
    "\u041a\u043e\u0448\u043a\u0430 \u043d\u0430 \u0414\u0418\u0412\u0410\u041d\u0415",
    "\u092c\u093f\u0932\u094d\u0932\u0940",
    "\u0e41\u0e21\u0e27\u0e19\u0e2d\u0e19",
    "\u01c5ungla \u01c4 \u1f88",
    "\uff21\uff22\uff23 \uff41\uff42\uff43",
    "\U0001d400\U0001d401 \u2102",
)
COMBINING = ("e\u0301", "a\u0308", "n\u0303", "Z\u0351\u0300\u036b\u0315o\u0336", "\u0301", "i\u0307", "\u20dd")
ENTITIES = ("&amp;", "&#39;", "&quot;", "&lt;b&gt;", "&amp;amp;", "&amp;amp;amp;", "&nbsp;", "&#x1F600;", "&copy;")
ENTITIES += ("&notanentity;", "&#0;", "&#128;", "&#xD800;", "&amp;lt;end_of_text&amp;gt;", "&", "&#", "&eacute")
MOJIBAKE = ("caf\u00c3\u00a9", "\u00c3\u00bcber", "\u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d", "don\u00e2\u20ac\u2122t")
MOJIBAKE += ("Espa\u00c3\u00b1a", "\u00c3\u0192\u00c2\u00a9", "\u00e6\u009d\u00b1\u00e4\u00ba\u00ac", "\u00c2\u00a0")
SPACES = (" ", "  ", "\t", "\n", "\r\n", " \t\n ", "\u00a0", "\u3000", "\u2028", "\x0b\x0c", "\x1c", "\u2003", "\x85")
INVISIBLE = ("\u200b", "\u200c", "\u200d", "\ufeff", "\u2060", "\u00ad", "\u180e", "\u2061", "\u034f", "\ufe0f")
ODD = ("\x00", "\x7f", "\x1b[31mred\x1b[0m", "\ud800", "\udfff", "\ud83d\ude00", "\ue000", "\uffff", "\U0010ffff")
ODD += ("\ufffd", "\u0000\u0001", "\U0001e030", "\U00010d50", "\U00011380", "\U0001f8b0")
SPECIALS = ("<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>", "!<end_of_text>", "<START_OF_TEXT>")
SPECIALS += ("a<start_of_text>b", "<<end_of_text>>", "<\u017ftart_of_text>", "'s<end_of_text>", "1<end_of_text>")
SPECIALS += ("<end_of_text><end_of_text>", "<end_of_text", "&lt;start_of_text&gt;", "<start_of_text>\u0301")
FOLDING = ("'\u017f", "'S", "'\u212a", "'\uff33", "'\u0130", "'RE", "'LL", "'\u017f\u017f", "\u212aelvin", "\u2126")
POOLS = (WORDS, CONTRACTIONS, NUMBERS, EMOJI, SCRIPTS, COMBINING, ENTITIES, MOJIBAKE, SPECIALS, FOLDING, ODD)


def _random_char(rng: random.Random) -> str:
    while True:
        c = rng.randrange(0x110000) if rng.random() < 0.5 else rng.randrange(0x3000)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def _fragment(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 8)))
    if kind == 1:
        return rng.choice(APOSTROPHES).join(rng.sample(WORDS, 2))
    if kind == 2:
        return "".join(_random_char(rng) for _ in range(rng.randint(1, 6)))
    if kind == 3:
        return rng.choice(INVISIBLE).join(rng.sample(WORDS, 2))
    return rng.choice(rng.choice(POOLS))


def _case(rng: random.Random, text: str) -> str:
    return rng.choice((str, str, str.upper, str.title, str.swapcase))(text)


def corpus(seed: int = 20240917, size: int = 3000) -> list[str]:
    rng = random.Random(seed)
    texts = ["", " ", "\n\t", "a", "A"]
    texts += [s for pool in (*POOLS, PUNCT, APOSTROPHES, SPACES, INVISIBLE) for s in pool]
    for _ in range(size // 3):  # captions, the common case
        caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        texts.append(_case(rng, caption) + rng.choice(("", ".", "!", "...", " .")))
    for _ in range(size - size // 3):  # fragments of every kind glued with any kind of space or none
        glue = (rng.choice(SPACES) if rng.random() < 0.7 else "" for _ in range(7))
        texts.append(_case(rng, "".join(_fragment(rng) + next(glue) for _ in range(rng.randint(1, 7)))))
    texts += [  # truncation: many words, one long word, many single-digit pieces, long runs of anything
        " ".join(WORDS) * 3,
        "supercalifragilistic" * 20,
        "1234567890" * 20,
        "!?" * 150,
        "\U0001f600" * 100,
        "\u6771\u4eac" * 100,
        "<end_of_text>" * 80,
        "caf\u00c3\u00a9 &amp; " * 60,
    ]
    texts += [" ".join(_fragment(rng) for _ in range(rng.randint(40, 120))) for _ in range(30)]
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus()


@pytest.mark.parametrize("context_length", [32, 72])
def test_matches_open_clip(texts, context_length, tmp_path):
    import open_clip

    name = {32: "PE-Core-B-16", 72: "PE-Core-bigG-14-448"}[context_length]
    reference = open_clip.get_tokenizer(name)
    assert reference.context_length == context_length
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer_json(context_length), encoding="utf-8")
    ours = PETokenizer.from_file(path, context_length)

    got = ours(texts)
    want = reference(texts).numpy()
    assert got.dtype == np.int64 and got.shape == want.shape == (len(texts), context_length)
    bad = np.flatnonzero((got != want).any(axis=1))
    for i in bad[:8]:
        print(f"{texts[i]!r}\n  ours      {got[i].tolist()}\n  open_clip {want[i].tolist()}")
    assert bad.size == 0, f"{bad.size} of {len(texts)} texts differ"
    assert (got[:, 0] == START_ID).all()
    assert (got == END_ID).any(axis=1).all()
    assert (want[:, -1] != 0).any(), "the corpus must exercise truncation"
    np.testing.assert_array_equal(ours("a cat"), reference("a cat").numpy())  # a lone string is one text
    assert ours([]).shape == (0, context_length)


def test_one_file_serves_both_context_lengths():
    import open_clip

    texts = corpus(seed=7, size=200)
    ours = PETokenizer.from_json(tokenizer_json(32), 72)
    np.testing.assert_array_equal(ours(texts), open_clip.get_tokenizer("PE-Core-bigG-14-448")(texts).numpy())


def test_import_does_not_load_torch():
    code = "import sys, app.model.tokenizer; print(sorted({'torch', 'open_clip'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
