"""Cut long audio into Whisper windows that overlap by a stride on each side.

This is the same geometry as transformers' ASR pipeline (``chunk_iter``): windows of
``chunk_length_s`` advance by ``chunk_length_s - 2 * stride_length_s``; the first
window has no left stride and the last no right stride. The merge step
(:func:`app.inference.whisper.merge_chunks`) uses the strides to drop the words
each window hears twice, so nothing is lost or doubled at chunk borders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Chunk:
    index: int
    start_s: float  # where the window starts in the whole file
    audio: np.ndarray
    stride_left_s: float
    stride_right_s: float

    @property
    def length_s(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE


def iter_chunks(audio: np.ndarray, chunk_length_s: float, stride_length_s: float) -> Iterator[Chunk]:
    chunk_len = round(chunk_length_s * SAMPLE_RATE)
    stride = round(stride_length_s * SAMPLE_RATE)
    if chunk_len <= 2 * stride:
        raise ValueError("chunk length must exceed twice the stride")
    step = chunk_len - 2 * stride
    total = audio.shape[0]
    index = 0
    for start in range(0, max(total, 1), step):
        end = start + chunk_len
        piece = audio[start:end]
        left = 0 if start == 0 else stride
        is_last = end >= total
        right = 0 if is_last else stride
        if piece.shape[0] > left:
            yield Chunk(index, start / SAMPLE_RATE, piece, left / SAMPLE_RATE, right / SAMPLE_RATE)
            index += 1
        if is_last:
            break
