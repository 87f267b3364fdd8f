"""SubRip (srt) and WebVTT subtitles from timed segments, sized for reading.

A Whisper segment can run 10 s and 200 characters; a cue that size cannot be read. Each
segment becomes one or more cues of at most ``MAX_LINES`` lines of ``MAX_LINE_CHARS``
characters (the common broadcast guideline: 42 x 2), split at word boundaries, the
segment's time shared between its cues in proportion to their characters. Cues never
overlap and last at least ``MIN_CUE_S`` where the audio allows.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence

from app.inference.whisper import Segment

MAX_LINE_CHARS = 42
MAX_LINES = 2
MIN_CUE_S = 0.5


def cues(segments: Iterable[Segment]) -> list[tuple[float, float, list[str]]]:
    """``(start, end, lines)`` for every cue, in time order."""
    out: list[tuple[float, float, list[str]]] = []
    for seg in segments:
        lines = textwrap.wrap(seg.text.strip(), MAX_LINE_CHARS, break_long_words=False, break_on_hyphens=False)
        if not lines:
            continue
        groups = [lines[i : i + MAX_LINES] for i in range(0, len(lines), MAX_LINES)]
        total = sum(len(" ".join(g)) for g in groups)
        start = seg.start
        for n, group in enumerate(groups):
            share = len(" ".join(group)) / total
            end = seg.end if n == len(groups) - 1 else start + (seg.end - seg.start) * share
            out.append((start, end, group))
            start = end
    # at least MIN_CUE_S each, but never running into the next cue
    fixed = []
    for i, (start, end, lines) in enumerate(out):
        limit = out[i + 1][0] if i + 1 < len(out) else float("inf")
        fixed.append((start, min(max(end, start + MIN_CUE_S), max(limit, end)), lines))
    return fixed


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: Sequence[Segment]) -> str:
    blocks = [
        f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n" + "\n".join(lines) + "\n"
        for i, (start, end, lines) in enumerate(cues(segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: Sequence[Segment]) -> str:
    blocks = [
        f"{_clock(start, '.')} --> {_clock(end, '.')}\n" + "\n".join(lines) + "\n"
        for start, end, lines in cues(segments)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)
