import itertools

import numpy as np
import pytest

from app.inference.chunking import SAMPLE_RATE, iter_chunks


def test_windows_tile_the_file_with_strides():
    audio = np.arange(int(95.5 * SAMPLE_RATE), dtype=np.float32)
    chunks = list(iter_chunks(audio, 30, 5))
    assert [c.start_s for c in chunks] == [0, 20, 40, 60, 80]
    assert chunks[0].stride_left_s == 0 and chunks[-1].stride_right_s == 0
    assert all(c.stride_left_s == 5 for c in chunks[1:])
    assert all(c.stride_right_s == 5 for c in chunks[:-1])
    # owned regions [start + left, end - right) cover the file exactly once
    owned = [(c.start_s + c.stride_left_s, c.start_s + c.length_s - c.stride_right_s) for c in chunks]
    assert owned[0][0] == 0 and owned[-1][1] == pytest.approx(95.5)
    for (_, end), (start, _) in itertools.pairwise(owned):
        assert end == pytest.approx(start)
    # the samples are the file's own, not copies shifted in time
    assert chunks[2].audio[0] == 40 * SAMPLE_RATE


def test_short_audio_is_one_window():
    chunks = list(iter_chunks(np.zeros(SAMPLE_RATE, dtype=np.float32), 30, 5))
    assert len(chunks) == 1 and chunks[0].length_s == 1


def test_stride_must_leave_room():
    with pytest.raises(ValueError, match="stride"):
        list(iter_chunks(np.zeros(10, dtype=np.float32), 10, 5))
