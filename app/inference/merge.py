"""Join the segments of overlapping windows into one transcript.

Each window (see :mod:`app.inference.chunking`) overlaps its neighbour by
``2 * stride`` seconds, so speech near a border is heard twice. For every border
we look, inside the overlap, for a segment boundary that both windows agree on
(Whisper ends segments at pauses, so there nearly always is one) and switch from
the left window to the right one there. Nothing is lost and nothing doubled, and
each segment keeps the timing of the window that heard it whole. When no common
boundary exists we fall back to splitting at the middle of the overlap and remove
any words both sides kept with a longest-common-run match on the token ids (against
every left segment the right one overlaps in time: one right segment may cover several
left ones).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from app.inference.chunking import Chunk

# Two windows "agree" on a boundary when their timestamps are this close (seconds).
BOUNDARY_TOLERANCE_S = 0.6
# A boundary this close to the edge of the overlap may belong to a cut-off word.
EDGE_MARGIN_S = 0.3
MIN_DUPLICATE_TOKENS = 2


@dataclass(frozen=True)
class RawSegment:
    start: float  # seconds in the whole file
    end: float
    tokens: tuple[int, ...]
    closed: bool  # False when the window ended before Whisper closed the segment
    #: per token, its (start, end) in whole-file seconds (word timestamps only); sliced with ``tokens``
    times: tuple[tuple[float, float] | None, ...] | None = None

    @property
    def mid(self) -> float:
        return (self.start + self.end) / 2


def parse_segments(
    tokens: Sequence[int],
    chunk: Chunk,
    timestamp_begin: int,
    time_precision: float,
    *,
    times: Sequence[tuple[float, float] | None] | None = None,
) -> list[RawSegment]:
    """Split one window's token ids into timed segments (absolute times).

    ``times``: per token, its (start, end) in the window (word timestamps); each segment
    then carries its tokens' times in whole-file seconds.
    """
    segments: list[RawSegment] = []
    start: float | None = None
    text: list[int] = []
    text_times: list[tuple[float, float] | None] = []
    last_time = 0.0

    def timed() -> tuple[tuple[float, float] | None, ...] | None:
        return tuple(text_times) if times is not None else None

    for n, tok in enumerate(tokens):
        if tok >= timestamp_begin:
            t = (tok - timestamp_begin) * time_precision
            if t < last_time:
                # Time went backwards: the model ran past the window's end and started
                # over. What follows is not anchored to this window; stop here.
                break
            if start is None:
                start = t
            elif text:
                segments.append(
                    RawSegment(chunk.start_s + start, chunk.start_s + max(t, start), tuple(text), True, timed())
                )
                start, text, text_times = None, [], []
            else:
                start = t  # a repeated timestamp: the pair <|t|><|t|> opens the next segment at t
            last_time = t
        else:
            if start is None:
                start = last_time
            text.append(tok)
            if times is not None:
                t_tok = times[n]
                text_times.append(None if t_tok is None else (chunk.start_s + t_tok[0], chunk.start_s + t_tok[1]))
    if text:
        begin = chunk.start_s + (start if start is not None else last_time)
        segments.append(RawSegment(begin, max(begin, chunk.start_s + chunk.length_s), tuple(text), False, timed()))
    return segments


def _sliced(seg: RawSegment, first: int, stop: int | None = None, **changes) -> RawSegment:
    """``seg`` with ``tokens[first:stop]``, its token times sliced alike."""
    times = seg.times[first:stop] if seg.times is not None else None
    return replace(seg, tokens=seg.tokens[first:stop], times=times, **changes)


def _dedupe(left: RawSegment, right: RawSegment) -> tuple[RawSegment, RawSegment]:
    """Drop from ``right`` the words it repeats from the end of ``left``.

    Only a run that ends ``left`` and starts ``right`` counts (the two segments meet at an
    agreed boundary and may share a word or two across it).
    """
    matcher = difflib.SequenceMatcher(None, left.tokens, right.tokens, autojunk=False)
    match = matcher.find_longest_match(0, len(left.tokens), 0, len(right.tokens))
    if match.size < MIN_DUPLICATE_TOKENS:
        return left, right
    if match.a + match.size < len(left.tokens) - 1 or match.b > 1:
        return left, right
    return (
        _sliced(left, 0, match.a + match.size),
        _sliced(right, match.b + match.size, None, start=max(right.start, left.end)),
    )


class WindowMerger:
    """Adds windows in audio order; ``merged`` is the transcript so far.

    Segments that end before the next window starts can never change again
    (:meth:`stable_count`), which is what lets ``?stream=1`` send them at once.
    Each :meth:`add` only looks at the tail that overlaps the new window, so a
    long file merges in linear time.
    """

    def __init__(self) -> None:
        self.merged: list[RawSegment] = []
        self._prev: Chunk | None = None

    def add(self, chunk: Chunk, segments: Sequence[RawSegment]) -> None:
        prev, self._prev = self._prev, chunk
        if prev is None:
            self.merged = list(segments)
            return
        overlap_start = chunk.start_s
        overlap_end = prev.start_s + prev.length_s
        border = chunk.start_s + chunk.stride_left_s
        # Only segments reaching into the overlap can be affected.
        split = len(self.merged)
        while split > 0 and self.merged[split - 1].end >= overlap_start - BOUNDARY_TOLERANCE_S:
            split -= 1
        head, tail = self.merged[:split], self.merged[split:]
        self.merged = head + _join(tail, list(segments), overlap_start, overlap_end, border)

    def stable_count(self, next_window_start: float | None) -> int:
        """How many leading segments are final given where the next window starts."""
        if next_window_start is None:
            return len(self.merged)
        count = 0
        for seg in self.merged:
            if seg.end > next_window_start:
                break
            count += 1
        return count


def _join(
    left_tail: list[RawSegment], segments: list[RawSegment], overlap_start: float, overlap_end: float, border: float
) -> list[RawSegment]:
    best: tuple[float, int, int] | None = None
    for k, left in enumerate(left_tail):
        if not left.closed or not (overlap_start + EDGE_MARGIN_S <= left.end <= overlap_end - EDGE_MARGIN_S):
            continue
        for j, right in enumerate(segments):
            if abs(right.start - left.end) <= BOUNDARY_TOLERANCE_S:
                score = abs(left.end - border)
                if best is None or score < best[0]:
                    best = (score, k, j)
    if best is not None:
        _, k, j = best
        kept_left, kept_right = left_tail[: k + 1], segments[j:]
        if kept_right:
            kept_left[-1], kept_right[0] = _dedupe(kept_left[-1], kept_right[0])
        return kept_left + [s for s in kept_right if s.tokens]
    # No boundary both windows agree on: each keeps what starts on its side of the
    # border. Speech the left side does not cover is borrowed from the right window's
    # segment across the border: the ending of an unfinished left segment, or, when the
    # left window closed its last segment early (it stops short of the border) and the
    # right window's segment runs on past it, the words after that close.
    kept_left = [s for s in left_tail if s.start < border]
    kept_right = [s for s in segments if s.start >= border]
    if kept_left:
        last = kept_left[-1]
        reach = last.start if not last.closed else max(last.end + BOUNDARY_TOLERANCE_S, border)
        straddling = [s for s in segments if s.start < border and s.end > reach]
        if straddling:
            kept_right.insert(0, straddling[-1])
    if kept_left and kept_right and kept_right[0].start < kept_left[-1].end:
        kept_left, kept_right[0] = _dedupe_overlapped(kept_left, kept_right[0])
    return kept_left + [s for s in kept_right if s.tokens]


def _dedupe_overlapped(left: list[RawSegment], right: RawSegment) -> tuple[list[RawSegment], RawSegment]:
    """Drop from ``right`` the words it repeats from the ``left`` segments it overlaps in time.

    The right window may hear several of the left window's segments as one (isolated words
    with pauses: the left has ``Thunder`` 20-22 s and ``Silver`` 23-25 s, the right one
    segment ``Thunder Silver Orange ...`` from 20 s), so the repeated run is looked for in
    all of them together, not only in the last. The left keeps its words up to the end of
    the run, the right what follows it.
    """
    first = len(left) - 1
    while first > 0 and left[first - 1].end > right.start:
        first -= 1
    overlapped = left[first:]
    joined = [tok for seg in overlapped for tok in seg.tokens]
    matcher = difflib.SequenceMatcher(None, joined, right.tokens, autojunk=False)
    match = matcher.find_longest_match(0, len(joined), 0, len(right.tokens))
    if match.size < MIN_DUPLICATE_TOKENS:
        return left, right
    run_end = match.a + match.size
    kept: list[RawSegment] = []
    at = 0  # index in ``joined`` of the segment's first token
    for seg in overlapped:
        if at >= run_end:
            break
        kept.append(seg if at + len(seg.tokens) <= run_end else _sliced(seg, 0, run_end - at))
        at += len(seg.tokens)
    left = left[:first] + kept
    return left, _sliced(right, match.b + match.size, None, start=max(right.start, left[-1].end))


def merge_windows(windows: Sequence[tuple[Chunk, Sequence[RawSegment]]]) -> list[RawSegment]:
    merger = WindowMerger()
    for chunk, segments in windows:
        merger.add(chunk, segments)
    return merger.merged
