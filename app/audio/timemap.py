"""Cut silences out of audio and map times in the shortened audio back to the original.

Voice activity detection (:mod:`app.audio.vad`) keeps only the speech regions of a
file; :func:`compact` joins them into one shorter signal that the model transcribes,
and the :class:`TimeMap` it returns turns every time the model reports (a segment's
start or end, a word's) into seconds of the original file.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from app.audio.decode import SAMPLE_RATE


@dataclass(frozen=True)
class TimeMap:
    """Kept pieces of the original audio, in order, and where each lies in both signals.

    Piece ``i`` starts at ``original_starts[i]`` seconds in the original audio and at
    ``compact_starts[i]`` in the compacted audio, and lasts ``lengths[i]`` seconds.

    ``snap_s``: each piece is speech padded with this much silence on both sides, so the
    model may put a boundary anywhere in the silence between two pieces (segments often
    start right where the previous one ended). A start within ``snap_s`` before the next
    piece belongs to that piece, and an end within ``snap_s`` after a piece's start to the
    piece before: nothing is placed in the cut-out gap.
    """

    original_starts: tuple[float, ...]
    compact_starts: tuple[float, ...]
    lengths: tuple[float, ...]
    snap_s: float = 0.0

    @classmethod
    def from_regions(
        cls, regions: Sequence[tuple[int, int]], sample_rate: int = SAMPLE_RATE, *, snap_s: float = 0.0
    ) -> TimeMap:
        """The map for ``regions`` (sorted, disjoint ``[start, end)`` sample ranges) laid end to end."""
        original, compact, lengths = [], [], []
        at = 0
        for start, end in regions:
            original.append(start / sample_rate)
            compact.append(at / sample_rate)
            lengths.append((end - start) / sample_rate)
            at += end - start
        return cls(tuple(original), tuple(compact), tuple(lengths), snap_s)

    @property
    def compact_seconds(self) -> float:
        return self.compact_starts[-1] + self.lengths[-1] if self.lengths else 0.0

    def to_original(self, t: float, *, end: bool = False) -> float:
        """Seconds in the original audio of ``t`` seconds into the compacted audio.

        Where two pieces meet, the same compacted time is both the end of one piece and
        the start of the next: ``end=True`` picks the earlier piece (for the end of a
        segment or word), the default the later one (for a start); see also ``snap_s``.
        Times before the first piece or after the last are clamped to it.
        """
        if not self.lengths:
            return t
        if end:
            # the first piece that ends at or after t
            i = min(bisect.bisect_left(self._ends, t), len(self.lengths) - 1)
            if i > 0 and t - self.compact_starts[i] <= self.snap_s:  # in this piece's leading padding
                return self.original_starts[i - 1] + self.lengths[i - 1]
        else:
            # the last piece that starts at or before t
            i = max(bisect.bisect_right(self.compact_starts, t) - 1, 0)
            if i + 1 < len(self.lengths) and self.compact_starts[i + 1] - t <= self.snap_s:  # trailing padding
                return self.original_starts[i + 1]
        offset = min(max(t - self.compact_starts[i], 0.0), self.lengths[i])
        return self.original_starts[i] + offset

    @cached_property
    def _ends(self) -> list[float]:
        return [s + n for s, n in zip(self.compact_starts, self.lengths, strict=True)]


def compact(
    audio: np.ndarray, regions: Sequence[tuple[int, int]], *, snap_s: float = 0.0
) -> tuple[np.ndarray, TimeMap]:
    """``audio`` with only ``regions`` kept (joined end to end) and the map back to the original."""
    pieces = [audio[start:end] for start, end in regions]
    joined = np.concatenate(pieces) if pieces else audio[:0]
    return joined, TimeMap.from_regions(regions, snap_s=snap_s)
