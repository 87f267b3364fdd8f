"""Temperature fallback: decode a window again when its greedy text is a repetition loop.

Greedy decoding can fall into a loop ("the new content was created by the new people the
new content was created by the new people ..."), replacing the real speech of a whole
window. OpenAI's ``transcribe`` detects this by the text's gzip compression ratio
(> 2.4: far more repetitive than language) and decodes the window again at rising
temperatures (0.2, 0.4, ... 1.0) until the text stops looking like a loop. This does the
same, per window, with a fixed random seed per window and attempt so that the same
audio gives the same text every time, whatever else shares its batch. If every
temperature still loops, the least repetitive attempt is kept.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np

#: OpenAI's default ``compression_ratio_threshold``.
COMPRESSION_RATIO_THRESHOLD = 2.4
#: OpenAI's default fallback temperatures after 0.
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
SEED = 0

Decode = Callable[[Sequence[np.ndarray], float, int], list[tuple[int, ...]]]
"""``decode(audios, temperature, seed)``: token ids per window."""


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def redecode_loops(
    audios: Sequence[np.ndarray],
    results: list[tuple[int, ...]],
    decode: Decode,
    text_of: Callable[[tuple[int, ...]], str],
    *,
    threshold: float = COMPRESSION_RATIO_THRESHOLD,
    temperatures: Sequence[float] = FALLBACK_TEMPERATURES,
) -> tuple[list[tuple[int, ...]], int]:
    """``results`` with looping windows decoded again; also how many re-decodes ran."""
    results = list(results)
    redecodes = 0
    for i, tokens in enumerate(results):
        best, best_ratio = tokens, compression_ratio(text_of(tokens))
        for temperature in temperatures:
            if best_ratio <= threshold:
                break
            # one window at a time: its random draws never depend on its batch neighbours
            (attempt,) = decode([audios[i]], temperature, SEED)
            redecodes += 1
            ratio = compression_ratio(text_of(attempt))
            if ratio < best_ratio:
                best, best_ratio = attempt, ratio
        results[i] = best
    return results, redecodes
