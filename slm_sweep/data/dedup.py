"""Training examples whose question repeats a question of an evaluation set, exactly or nearly.

Two questions are

- **exact duplicates** when their normalised texts are equal (``normalise_question``: NFKC, lower case, the words,
  numbers and arithmetic signs in order, other punctuation and spacing dropped, thousands separators removed:
  "It costs $1,200." and "it costs 1200" are equal; "It costs $1,300." is not);
- **near duplicates** when the sets of character 5-grams of their normalised texts (UTF-8 bytes, the single spaces
  between words included) have a Jaccard similarity (shared / all distinct 5-grams, as a float64) of at least
  ``near_threshold``. On GSM8K the pairs at 0.5 and above are the same problem with other names and numbers
  (docs/results.md#deduplication lists measured pairs on both sides of the threshold).

The similarity is exact for every pair, not estimated (``DedupIndex``). GSM8K train (7473) against GSM8K test and
the six out-of-domain sets (5703 questions) takes a few seconds.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

SHINGLE_BYTES = 5
# n-grams held by more reference questions than this are "common" (bit sets), the others go through an inverted
# index; a speed setting only, the similarities are exact either way
COMMON_AFTER = 64
PAIRS_PER_BATCH = 1 << 21  # questions x reference questions compared at once (bounds the memory of a batch)

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[-+*/=<>%^×÷]")


def normalise_question(text: str) -> str:
    """Lower-case words, numbers and arithmetic signs of ``text`` joined by single spaces; other punctuation and
    symbols dropped ("3 + 4" and "3 - 4" stay apart)."""
    text = _THOUSANDS.sub("", unicodedata.normalize("NFKC", text).lower())
    return " ".join(_TOKEN.findall(text))


def shingles(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct character n-grams of each normalised text, as (question index, n-gram id) pairs sorted by
    question then n-gram, and each question's count of n-grams. A text shorter than n is one n-gram of its own."""
    n = SHINGLE_BYTES
    encoded = [text.encode("utf-8") for text in texts]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    ends = np.cumsum(lengths)
    buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    count = max(len(buffer) - n + 1, 0)
    grams = np.zeros(count, dtype=np.uint64)
    for k in range(n):
        grams |= buffer[k : k + count] << np.uint64(8 * (n - 1 - k))
    positions = np.arange(count, dtype=np.int64)
    owner = np.searchsorted(ends, positions, side="right")
    inside = positions + n <= ends[np.minimum(owner, len(ends) - 1)] if count else np.zeros(0, dtype=bool)
    docs, grams = owner[inside], grams[inside]
    short = np.flatnonzero(lengths < n)
    if len(short):
        # a whole short text: its bytes, marked by its length above the 40 bits a full n-gram can use
        values = [int.from_bytes(encoded[i], "big") | (len(encoded[i]) + 1) << (8 * n) for i in short]
        docs = np.concatenate([docs, short])
        grams = np.concatenate([grams, np.array(values, dtype=np.uint64)])
    docs = docs.astype(np.int64)
    order = np.lexsort((grams, docs))
    docs, grams = docs[order], grams[order]
    first = np.ones(len(docs), dtype=bool)
    first[1:] = (docs[1:] != docs[:-1]) | (grams[1:] != grams[:-1])
    docs, grams = docs[first], grams[first]
    return docs, grams, np.bincount(docs, minlength=len(texts))


@dataclass
class Match:
    """The reference sets a question repeats: exactly (normalised text) or nearly (and not exactly)."""

    exact: list[str] = field(default_factory=list)
    near: list[str] = field(default_factory=list)
    similarity: float = 0.0  # highest Jaccard similarity among the reference questions it repeats (0: none)
    closest: tuple[str, int] | None = None  # (set, index in the set) of that reference question

    def __bool__(self) -> bool:
        return bool(self.exact or self.near)


class DedupIndex:
    """The questions of named reference sets, ready to tell which of them a question repeats.

    Shared n-grams are counted in two parts. N-grams held by at most COMMON_AFTER reference questions go through an
    inverted index, which gives every (question, reference) pair its rare overlap. Adding the most common n-grams
    the two could share, min(common n-grams of each), bounds the whole overlap; only pairs whose bound reaches the
    threshold are counted exactly (bit sets of the common n-grams). The result is exact; the bound only skips
    pairs that cannot reach the threshold."""

    def __init__(self, sets: Mapping[str, Sequence[str]], near_threshold: float):
        if isinstance(near_threshold, bool) or not 0 < near_threshold <= 1:
            raise ValueError(f"near_threshold={near_threshold!r} must be in (0, 1]")
        self.threshold = float(near_threshold)
        self.names = list(sets)
        texts = [normalise_question(q) for questions in sets.values() for q in questions]
        sizes = [len(sets[name]) for name in self.names]
        self.owner = np.repeat(np.arange(len(self.names)), sizes)
        self.first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.exact: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            self.exact.setdefault(text, []).append(i)
        self.count = len(texts)
        docs, grams, self.gram_counts = shingles(texts)
        self.vocab, inverse, frequency = np.unique(grams, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        self.common = frequency > COMMON_AFTER
        self.common_column = np.full(len(self.vocab), -1, dtype=np.int64)
        self.common_column[self.common] = np.arange(int(self.common.sum()))
        in_common = self.common[inverse]
        self.common_bits = _bit_rows(docs[in_common], self.common_column[inverse[in_common]], self.count,
                                     int(self.common.sum()))
        self.common_counts = np.bincount(docs[in_common], minlength=self.count)
        # inverted index of the rare n-grams: postings[offsets[v]:offsets[v + 1]] hold the questions with n-gram v
        rare = ~in_common
        self.postings = docs[rare][np.argsort(inverse[rare], kind="stable")]
        self.offsets = np.zeros(len(self.vocab) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum(np.bincount(inverse[rare], minlength=len(self.vocab)))

    def batch_size(self) -> int:
        return max(1, min(512, PAIRS_PER_BATCH // max(self.count, 1)))

    def near_pairs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(question, reference question, Jaccard similarity) of every pair at or above the threshold."""
        empty = np.zeros(0, dtype=np.int64)
        if not self.count or not texts:
            return empty, empty, np.zeros(0)
        docs, grams, counts = shingles(texts)
        position = np.minimum(np.searchsorted(self.vocab, grams), len(self.vocab) - 1)
        known = self.vocab[position] == grams
        docs, vocab_ids = docs[known], position[known]
        in_common = self.common[vocab_ids]
        bits = _bit_rows(docs[in_common], self.common_column[vocab_ids[in_common]], len(texts),
                         int(self.common.sum()))
        common_counts = np.bincount(docs[in_common], minlength=len(texts))
        docs, vocab_ids = docs[~in_common], vocab_ids[~in_common]
        lengths = self.offsets[vocab_ids + 1] - self.offsets[vocab_ids]
        firsts = np.repeat(self.offsets[vocab_ids] - (np.cumsum(lengths) - lengths), lengths)
        cells = np.repeat(docs, lengths) * self.count + self.postings[firsts + np.arange(int(lengths.sum()))]
        rare = np.bincount(cells, minlength=len(texts) * self.count).reshape(len(texts), self.count)
        # Jaccard = overlap / (|q| + |r| - overlap) grows with the overlap, so the bound's Jaccard bounds it; the
        # bound is at most min(|q|, |r|), so its union is positive
        total = counts[:, None] + self.gram_counts[None, :]
        bound = rare + np.minimum(common_counts[:, None], self.common_counts[None, :])
        rows, refs = np.nonzero(bound / (total - bound) >= self.threshold * (1 - 1e-9))
        overlap = rare[rows, refs] + _popcount(bits[rows] & self.common_bits[refs])
        similarity = overlap / (total[rows, refs] - overlap)
        near = similarity >= self.threshold
        return rows[near], refs[near], similarity[near]

    def matches(self, questions: Sequence[str]) -> list[Match]:
        """For each question, the reference sets it repeats exactly or nearly."""
        texts = [normalise_question(q) for q in questions]
        found = [Match() for _ in texts]
        for row, text in enumerate(texts):
            refs = self.exact.get(text)
            if refs:
                found[row].exact = [self.names[s] for s in sorted({int(self.owner[i]) for i in refs})]
        rows, refs, similarity = self.near_pairs(texts)
        for row, ref, value in zip(rows.tolist(), refs.tolist(), similarity.tolist()):
            match, name = found[row], self.names[int(self.owner[ref])]
            if name not in match.exact and name not in match.near:
                match.near.append(name)
            if value > match.similarity:
                match.similarity = value
                match.closest = (name, ref - int(self.first[self.owner[ref]]))
        for match in found:
            match.near.sort(key=self.names.index)
        return found


def _bit_rows(rows: np.ndarray, columns: np.ndarray, count: int, width: int) -> np.ndarray:
    """A (count x words) uint64 bit set per row with the given (row, column) bits set."""
    bits = np.zeros((count, max(1, (width + 63) // 64)), dtype=np.uint64)
    np.bitwise_or.at(bits, (rows, columns // 64), np.left_shift(np.uint64(1), (columns % 64).astype(np.uint64)))
    return bits


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per row of a uint64 array."""
    return np.unpackbits(words.view(np.uint8), axis=-1).sum(axis=-1, dtype=np.int64)


@dataclass
class DedupCounts:
    """What deduplicating one split removed: examples examined and removed, exact and near duplicates, and per
    reference set the examples that repeat a question of that set (an example can repeat several sets)."""

    sets: list[str]
    examined: int = 0
    exact: int = 0
    near: int = 0
    by_set: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_set = {name: {"exact": 0, "near": 0} for name in self.sets}

    def add(self, match: Match) -> None:
        self.examined += 1
        if match.exact:
            self.exact += 1
        elif match.near:
            self.near += 1
        for name in match.exact:
            self.by_set[name]["exact"] += 1
        for name in match.near:
            self.by_set[name]["near"] += 1

    def as_record(self) -> dict:
        return {"examined": self.examined, "removed": self.exact + self.near, "exact": self.exact,
                "near": self.near, "by_set": self.by_set}


def deduplicate(examples: Sequence, index: DedupIndex, limit: int | None = None) -> tuple[list, DedupCounts]:
    """The examples (in order) whose question repeats no reference question, up to ``limit`` of them, and what was
    removed. With a limit, only as many examples are examined as it takes to keep ``limit``."""
    kept: list = []
    counts = DedupCounts(index.names)
    size = index.batch_size()
    for start in range(0, len(examples), size):
        batch = examples[start : start + size]
        for example, match in zip(batch, index.matches([e.question for e in batch])):
            if limit is not None and len(kept) >= limit:
                return kept, counts
            counts.add(match)
            if not match:
                kept.append(example)
    return kept, counts
