"""Colour contrast: the query asked again with its colour word swapped for every other basic colour.

A sentence model weighs the category of a phrase far above its colour: all-MiniLM-L6-v2 scores
"my blue cube" 0.79 against "a small blue cube" but still 0.65 against "a small green cube", so a
green cube's region can out-rank the blue one on mass alone. Asking "is this region closer to the
query than to the same query in another colour?" uses the model's own judgement of the colour
word, in its own space, instead of a colour classifier over pixels (GroundingConfig.colour_margin).
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch

BASIC_COLOURS = ("black", "white", "red", "green", "yellow", "blue", "brown", "orange", "pink", "purple", "grey")
"""English basic colour terms (Berlin and Kay's eleven); "gray" is read as "grey"."""

_SPELLINGS = {"gray": "grey"}
_WORD = re.compile(r"\b(" + "|".join(BASIC_COLOURS + tuple(_SPELLINGS)) + r")\b", re.IGNORECASE)


def colour_swaps(query: str) -> list[str]:
    """The query with its colour word replaced by each other basic colour; [] when it names none or
    more than one colour ("the black-and-white ball" names two: no single word to contrast)."""
    found = {_SPELLINGS.get(m.group(1).lower(), m.group(1).lower()) for m in _WORD.finditer(query)}
    if len(found) != 1:
        return []
    own = found.pop()
    return [_WORD.sub(other, query) for other in BASIC_COLOURS if other != own]


def query_embeddings(encode: Callable[[list[str]], torch.Tensor], query: str
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embedding [d], its colour swaps' embeddings [k, d] or None) of a normalised query, in one call of
    ``encode`` (texts -> [n, d]): what ``ground`` takes as text_emb and contrast."""
    swaps = colour_swaps(query)
    emb = encode([query] + swaps)
    return emb[0], (emb[1:] if swaps else None)
