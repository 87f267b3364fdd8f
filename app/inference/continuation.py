"""Finish windows whose decoding stopped early, so no speech is dropped mid-window.

Whisper (tiny especially) sometimes ends a window with ``<|endoftext|>`` long before the
speech in it ends, typically after a pause (``<|0.00|> The<|1.00|>`` and then nothing for
the remaining 25 s of talk), or stretches one word over 20 s of talk
(``<|1.00|> The<|21.12|>``), or runs into ``MAX_NEW_TOKENS`` halfway. The chunked pipeline
of the reference never notices: those words are simply lost. OpenAI's own sequential
decoder avoids it by seeking to the last timestamp and decoding again from there.

This module does the same inside one window: when a window's last complete (and
plausible) segment ends
well before the part of the window the merge needs (``needed_s``: the window minus its
right stride) and the audio after it still has sound in it, the rest of the window is
decoded again as a window of its own, starting where that last complete segment starts
(it is decoded again too). Its tokens, with their timestamps shifted by the offset,
replace that segment and whatever followed it. At most ``max_rounds`` rounds, and only
while each round makes progress.

Why the start of the last segment and not its end (OpenAI's seek point): the end is a
pause, and a window that opens with seconds of silence before a lone word is where tiny.en
hallucinates. On isolated words ("monkey" at 19.5 s, "hammer" 23.0, "button" 26.4,
"kitchen" 28.2 of a window that stopped at ``hammer<|23.56|>``) decoding from 23.56 s gave
"I'm not going to be in the next one." (from 23.2-26 s: "I'm not going to be in the
camera. Bye.", "Bye"); from the segment's start at 19.18 s, "monkey hammer button
kitchen". When that start is no progress (the segment opens the window, or the previous
round already started there), the continuation starts at the segment's end as before.

Everything downstream (merge, segments, streaming) sees one ordinary token sequence per
window, in that window's time base.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from app.inference.chunking import SAMPLE_RATE

#: Seconds per timestamp token step (Whisper maps 30 s onto 1500 encoder positions).
TIME_PRECISION = 0.02
_SAMPLES_PER_STEP = round(TIME_PRECISION * SAMPLE_RATE)
_MAX_TIMESTAMP_INDEX = 1500

#: A segment over this much sound (not just time: isolated words with long pauses between
#: them are no skipped speech) with fewer text tokens per second of sound than this skipped
#: speech (read speech runs at 3 to 5 tokens a second).
SPARSE_SEGMENT_S = 5.0
SPARSE_TOKENS_PER_S = 0.5
#: A window counts as ended early when its last segment ends this long before ``needed_s``.
EARLY_END_MARGIN_S = 2.0
#: ...and at least this much sound remains after it (100 ms frames above the threshold).
MIN_REMAINING_SOUND_S = 0.5
_FRAME = SAMPLE_RATE // 10
#: A frame is sound when its RMS is above this fraction of the window's loud frames' RMS.
_SOUND_FRACTION = 0.1
#: ...and above -60 dBFS, whatever the window's level.
_SILENCE_RMS = 1e-3

Decode = Callable[[Sequence[np.ndarray]], list[tuple[int, ...]]]


def last_closed_segment(tokens: Sequence[int], timestamp_begin: int, audio: np.ndarray) -> tuple[int, int] | None:
    """Indices in ``tokens`` of the timestamps that open and close the last trustworthy segment.

    Segments are ``<|start|> text... <|end|>``; a trailing start timestamp with no text, or
    text cut off by the token cap, is not a complete segment. A segment that stretches a
    few tokens over many seconds of sound in ``audio`` (the window: ``<|1.00|> The<|21.12|>``
    over continuous talk: the model skipped the speech in between) is not trusted either,
    and nothing after it is. A segment closed by the timestamp that also closes the one
    before it (``<|a|> x<|b|> y<|c|>``) opens at that shared timestamp.
    """
    found = None
    opened = None  # index of the open segment's first timestamp
    last_ts = None
    text_tokens = 0
    for i, tok in enumerate(tokens):
        if tok < timestamp_begin:
            if opened is None and last_ts is not None:
                opened = last_ts  # text right after a closing timestamp: it opens this segment too
            text_tokens += 1
            continue
        if opened is not None and text_tokens:
            start_s = (tokens[opened] - timestamp_begin) * TIME_PRECISION
            end_s = (tok - timestamp_begin) * TIME_PRECISION
            if _implausibly_sparse(audio, start_s, end_s, text_tokens):
                break
            found, opened = (opened, i), None
        else:
            opened = i
        last_ts = i
        text_tokens = 0
    return found


def _implausibly_sparse(audio: np.ndarray, start_s: float, end_s: float, text_tokens: int) -> bool:
    seconds = end_s - start_s
    if seconds < SPARSE_SEGMENT_S or text_tokens >= SPARSE_TOKENS_PER_S * seconds:
        return False  # dense enough in time, so in sound too (the usual case: no audio read)
    sound = sound_seconds(audio, start_s, end_s)
    return sound >= SPARSE_SEGMENT_S and text_tokens < SPARSE_TOKENS_PER_S * sound


def sound_seconds(audio: np.ndarray, start_s: float, end_s: float) -> float:
    """Seconds of sound in ``audio[start_s:end_s]`` (100 ms frames).

    "Sound" is relative to the window itself (10% of the RMS of its loudest frames, and
    above -60 dBFS), so it hardly depends on the recording's level. Energy, not speech:
    noise also counts.
    """
    frames = len(audio) // _FRAME
    if frames == 0:
        return 0.0
    rms = np.sqrt(np.mean(np.square(audio[: frames * _FRAME].reshape(frames, _FRAME), dtype=np.float64), axis=1))
    loud = float(np.percentile(rms, 99))
    threshold = max(_SOUND_FRACTION * loud, _SILENCE_RMS)
    first, last = int(start_s * 10), min(int(end_s * 10), frames)
    return int(np.count_nonzero(rms[first:last] > threshold)) / 10


def has_sound(audio: np.ndarray, start_s: float, end_s: float) -> bool:
    """Whether ``audio[start_s:end_s]`` has at least :data:`MIN_REMAINING_SOUND_S` of sound
    (:func:`sound_seconds`; noise also counts, at the price of one wasted re-decode)."""
    return sound_seconds(audio, start_s, end_s) >= MIN_REMAINING_SOUND_S


def complete_early_endings(
    audios: Sequence[np.ndarray],
    results: list[tuple[int, ...]],
    needed_s: Sequence[float],
    decode: Decode,
    timestamp_begin: int,
    *,
    max_rounds: int = 2,
) -> tuple[list[tuple[int, ...]], int]:
    """``results`` with early-ended windows decoded to the end; also how many re-decodes ran."""
    results = list(results)
    progress = [0] * len(results)  # timestamp index each window has been completed to
    redecodes = 0
    for _ in range(max_rounds):
        todo: list[tuple[int, int, int]] = []  # (window, kept tokens, offset index)
        for i, tokens in enumerate(results):
            found = last_closed_segment(tokens, timestamp_begin, audios[i])
            if found is None:
                continue
            opened, closed = found
            end_s = (tokens[closed] - timestamp_begin) * TIME_PRECISION
            if end_s > needed_s[i] - EARLY_END_MARGIN_S or not has_sound(audios[i], end_s, needed_s[i]):
                continue
            # from where the last segment starts (decoded again), else from its end
            seek = opened if tokens[opened] - timestamp_begin > progress[i] else closed
            offset = tokens[seek] - timestamp_begin
            if offset <= progress[i]:
                continue
            progress[i] = offset
            todo.append((i, seek + 1, offset))
        if not todo:
            break
        continued = decode([audios[i][offset * _SAMPLES_PER_STEP :] for i, _, offset in todo])
        redecodes += len(todo)
        for (i, keep, offset), tail in zip(todo, continued, strict=True):
            shifted = tuple(
                min(tok + offset, timestamp_begin + _MAX_TIMESTAMP_INDEX) if tok >= timestamp_begin else tok
                for tok in tail
            )
            results[i] = results[i][:keep] + shifted
    return results, redecodes
