"""TextHandler: text normalisation and the vocabulary that the text built-ins share.

Input text is cleaned the way TorchServe's text handlers clean it (HTML tags dropped,
lower-cased, contractions expanded, accents and punctuation removed, split on whitespace) so a
vocabulary built for them maps the same tokens. The vocabulary is `source_vocab.pt` in the
model directory: a `{token: index}` dict saved with `torch.save` (loaded with
`weights_only=True`); unknown tokens map to `<unk>`'s index, or 0.
"""

from __future__ import annotations

import re
import string
import unicodedata
from pathlib import Path
from typing import Any

import torch
from marfleet.runtime.handlers.context import Context
from marfleet.runtime.handlers.defaults.base_handler import BaseHandler
from marfleet.runtime.handlers.util import CLEANUP_REGEX

VOCAB_FILE = "source_vocab.pt"
UNKNOWN_TOKEN = "<unk>"
# Irregular forms first; the suffix rules below handle the rest ("they're" -> "they are").
IRREGULAR_CONTRACTIONS = {"won't": "will not", "can't": "cannot", "shan't": "shall not"}
CONTRACTION_SUFFIXES = (
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'d\b"), " would"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'s\b"), " is"),
)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise_text(text: str) -> list[str]:
    """Clean `text` and split it into tokens."""
    text = CLEANUP_REGEX.sub("", text).lower()
    for contraction, expansion in IRREGULAR_CONTRACTIONS.items():
        text = text.replace(contraction, expansion)
    for pattern, expansion in CONTRACTION_SUFFIXES:
        text = pattern.sub(expansion, text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return text.translate(_PUNCTUATION).split()


def with_ngrams(tokens: list[str], n: int) -> list[str]:
    """The tokens followed by every run of 2..n consecutive tokens joined by spaces."""
    grams = list(tokens)
    for size in range(2, n + 1):
        grams += [" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)]
    return grams


class TextHandler(BaseHandler):
    """A BaseHandler that also loads the vocabulary and turns rows into token lists."""

    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: dict[str, int] = {}

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        path = Path(str(context.system_properties.get("model_dir")), VOCAB_FILE)
        if not path.is_file():
            raise FileNotFoundError(
                f"{VOCAB_FILE} is missing from the model archive: text handlers need it "
                "(a {token: index} dict saved with torch.save; add it with --extra-files)"
            )
        vocab = torch.load(path, weights_only=True)
        if not isinstance(vocab, dict):
            raise TypeError(f"{VOCAB_FILE} must hold a {{token: index}} dict, not {type(vocab)}")
        self.source_vocab = vocab

    def token_ids(self, tokens: list[str]) -> list[int]:
        unknown = self.source_vocab.get(UNKNOWN_TOKEN, 0)
        return [self.source_vocab.get(token, unknown) for token in tokens]

    @staticmethod
    def row_text(row: Any) -> str:
        text = row.get("data") or row.get("body") or ""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        return str(text)
