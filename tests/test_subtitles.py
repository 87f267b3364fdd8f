"""Subtitle cues from segments: readable line lengths, no overlaps, valid srt/vtt."""

import io
import itertools

import srt
import webvtt

from app.api.subtitles import MAX_LINE_CHARS, cues, to_srt, to_vtt
from app.inference.whisper import Segment

LONG = " When the work was finished, the chief engineer explained that the new light would switch on by itself."


def test_a_long_segment_becomes_several_readable_cues_in_its_time_span():
    out = cues([Segment(10.0, 17.0, LONG), Segment(17.0, 17.1, " Yes.")])
    assert len(out) >= 3
    assert all(len(line) <= MAX_LINE_CHARS for _, _, lines in out for line in lines)
    assert all(len(lines) <= 2 for _, _, lines in out)
    assert out[0][0] == 10.0 and out[-2][1] == 17.0
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(out))  # no overlaps
    assert out[-1][1] - out[-1][0] >= 0.5  # a very short last cue still stays readable
    assert " ".join(" ".join(lines) for _, _, lines in out[:-1]) == LONG.strip()


def test_srt_and_vtt_round_trip_through_parsers():
    segments = [Segment(0.0, 3.5, " Hello there."), Segment(3661.25, 3665.0, LONG)]
    subs = list(srt.parse(to_srt(segments)))
    assert subs[0].content == "Hello there." and subs[0].end.total_seconds() == 3.5
    assert subs[1].start.total_seconds() == 3661.25
    vtt = webvtt.from_buffer(io.StringIO(to_vtt(segments)))
    assert [c.text for c in vtt] == [s.content for s in subs]
    assert vtt[1].start == "01:01:01.250"
