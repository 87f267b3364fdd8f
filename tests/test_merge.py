"""The overlap merge on hand-made window outputs (token ids stand in for words)."""

import numpy as np
import pytest

from app.inference.chunking import SAMPLE_RATE, Chunk
from app.inference.merge import merge_windows, parse_segments

TS = 1000  # first timestamp token id in these tests
P = 0.02


def ts(seconds: float) -> int:
    return TS + round(seconds / P)


def chunk(index: int, start: float, length: float, left: float, right: float) -> Chunk:
    return Chunk(index, start, np.zeros(int(length * SAMPLE_RATE), dtype=np.float32), left, right)


def test_parse_pairs_and_open_tail():
    c = chunk(1, 20, 30, 5, 5)
    tokens = [ts(0), 1, 2, ts(3), ts(3), 3, 4, ts(6.5), 5, 6]
    segs = parse_segments(tokens, c, TS, P)
    assert [(s.start, s.end, s.tokens, s.closed) for s in segs] == [
        (20.0, 23.0, (1, 2), True),
        (23.0, 26.5, (3, 4), True),
        (26.5, 50.0, (5, 6), False),
    ]


def test_parse_stops_when_time_goes_backwards():
    c = chunk(0, 0, 30, 0, 5)
    segs = parse_segments([ts(27), 1, 2, ts(29.5), ts(1), 9, 9, ts(2)], c, TS, P)
    assert [s.tokens for s in segs] == [(1, 2)]


def test_switches_windows_at_a_shared_boundary_without_loss_or_double():
    a = chunk(0, 0, 30, 0, 5)
    b = chunk(1, 20, 30, 5, 0)
    # words 1..6 are spoken 0-28 s; the overlap is 20-30 s; both windows end a segment at 24 s.
    left = parse_segments([ts(0), 1, 2, ts(12), ts(12), 3, 4, ts(24), ts(24), 5, 6], a, TS, P)
    right = parse_segments([ts(0), 4, ts(4), ts(4), 5, 6, ts(8), ts(8), 7, ts(12)], b, TS, P)
    merged = merge_windows([(a, left), (b, right)])
    assert [t for s in merged for t in s.tokens] == [1, 2, 3, 4, 5, 6, 7]
    starts = [s.start for s in merged]
    assert starts == sorted(starts)


def test_words_shared_across_the_cut_are_kept_once():
    a = chunk(0, 0, 30, 0, 5)
    b = chunk(1, 20, 30, 5, 0)
    left = parse_segments([ts(0), 1, 2, ts(12), ts(12), 3, 4, 5, 6, ts(24.5)], a, TS, P)
    right = parse_segments([ts(0), 3, 4, ts(4.1), ts(4.1), 5, 6, 7, 8, ts(9)], b, TS, P)
    merged = merge_windows([(a, left), (b, right)])
    assert [t for s in merged for t in s.tokens] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_fallback_without_shared_boundary_splits_mid_overlap():
    a = chunk(0, 0, 30, 0, 5)
    b = chunk(1, 20, 30, 5, 0)
    left = parse_segments([ts(0), 1, 2, 3, ts(21), ts(21), 4, 5, 6, 7, 8], a, TS, P)  # open tail 21-30
    right = parse_segments([ts(0), 5, 6, 7, 8, ts(6), ts(6), 9, ts(8)], b, TS, P)  # 20-26, 26-28
    merged = merge_windows([(a, left), (b, right)])
    assert [t for s in merged for t in s.tokens] == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_fallback_keeps_the_words_after_a_left_segment_that_closed_short_of_the_border():
    """The 20-min benchmark lost 12 words here: the left window closed its last segment at
    24.7 s (border 25 s), the right one heard 20-29.5 s as one segment, so neither side
    kept what was said between 24.7 s and 29.5 s."""
    a = chunk(0, 0, 30, 0, 5)
    b = chunk(1, 20, 30, 5, 0)
    # words 1..4 spoken 19.7-24.7 s, words 5..8 spoken 24.7-29.5 s, 9..10 after
    left = parse_segments([ts(15), 0, ts(19.7), ts(19.7), 1, 2, 3, 4, ts(24.7)], a, TS, P)
    right = parse_segments([ts(0), 2, 3, 4, 5, 6, 7, 8, ts(9.5), ts(9.5), 9, 10, ts(12)], b, TS, P)
    merged = merge_windows([(a, left), (b, right)])
    assert [t for s in merged for t in s.tokens] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    starts = [s.start for s in merged]
    assert starts == sorted(starts)


def test_token_times_travel_with_their_tokens_through_the_merge():
    """Word timestamps: each token's time stays its own when the merge cuts and dedupes."""
    a = chunk(0, 0, 30, 0, 5)
    b = chunk(1, 20, 30, 5, 0)
    left_tokens = [ts(0), 1, 2, ts(12), ts(12), 3, 4, 5, 6, ts(24.5)]
    right_tokens = [ts(0), 3, 4, ts(4.1), ts(4.1), 5, 6, 7, 8, ts(9)]

    def times(tokens, shift):  # a token's time in its window encodes its id (and its window)
        return [None if t >= TS else (t + shift, t + shift + 0.1) for t in tokens]

    left = parse_segments(left_tokens, a, TS, P, times=times(left_tokens, 0.0))
    right = parse_segments(right_tokens, b, TS, P, times=times(right_tokens, 0.5))
    merged = merge_windows([(a, left), (b, right)])
    pairs = [(tok, t) for s in merged for tok, t in zip(s.tokens, s.times, strict=True)]
    assert [tok for tok, _ in pairs] == [1, 2, 3, 4, 5, 6, 7, 8]
    for tok, (start, end) in pairs:
        assert start in (tok, 20 + tok + 0.5)  # whole-file seconds, from the window that kept it
        assert end == pytest.approx(start + 0.1)
    assert dict(pairs)[7][0] == 27.5  # only the right window heard 7
    # without word timestamps nothing is carried
    assert all(s.times is None for s in merge_windows([(a, parse_segments(left_tokens, a, TS, P))]))


def test_fallback_dedupes_a_right_segment_that_covers_several_left_segments():
    """Isolated words, one every ~2.5 s: the left window times each one (Thunder 20-22 s,
    Silver 23-25 s, Orange 26-28 s), the right window hears 20-33.7 s as ONE segment, so no
    boundary is shared. "Thunder Silver" was kept twice: the right segment was only matched
    against the last left segment (" Silver", one token, too short to count)."""
    a = chunk(0, 0, 30, 0, 5)
    b = chunk(1, 20, 30, 5, 0)
    # 1 Garden, 2 Thunder, 3 Silver, 4 Orange, 5 Doctor, 6 Camera, 7 Forest, 8 Monkey
    left = parse_segments(
        [ts(16), 1, ts(18), ts(20), 2, ts(22), ts(23), 3, ts(25), ts(26), 4, ts(28), ts(28), 5, ts(29)], a, TS, P
    )
    right = parse_segments([ts(0), 2, 3, 4, 5, 6, 7, ts(13.68), ts(19.18), 8, ts(21.18)], b, TS, P)
    merged = merge_windows([(a, left), (b, right)])
    assert [t for s in merged for t in s.tokens] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [(s.start, s.end) for s in merged] == [(16, 18), (20, 22), (23, 25), (25, 33.68), (39.18, 41.18)]


def test_fallback_dedupe_cuts_the_left_after_the_repeated_run():
    """Words the left keeps after the run both windows heard go to the right's version."""
    a = chunk(0, 0, 30, 0, 5)
    b = chunk(1, 20, 30, 5, 0)
    # left: 1 (20-21.5 s), 2 (22-23 s), 3 9 (23.5-24.5 s): "9" is the left's mishearing of 4
    left = parse_segments([ts(20), 1, ts(21.5), ts(22), 2, ts(23), ts(23.5), 3, 9, ts(24.5)], a, TS, P)
    right = parse_segments([ts(0), 1, 2, 3, 4, 5, ts(8)], b, TS, P)  # one segment 20-28 s
    merged = merge_windows([(a, left), (b, right)])
    assert [s.tokens for s in merged] == [(1,), (2,), (3,), (4, 5)]
    assert merged[-1].start == 24.5


def test_fallback_keeps_both_sides_when_nothing_repeats():
    a = chunk(0, 0, 30, 0, 5)
    b = chunk(1, 20, 30, 5, 0)
    left = parse_segments([ts(20), 1, ts(22), ts(23), 2, ts(24.5)], a, TS, P)
    right = parse_segments([ts(0), 3, 4, 5, ts(8)], b, TS, P)  # heard 20-28 s but nothing the left has
    merged = merge_windows([(a, left), (b, right)])
    assert [t for s in merged for t in s.tokens] == [1, 2, 3, 4, 5]
