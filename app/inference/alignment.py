"""Word-level timestamps from the decoder's cross-attention on the alignment heads.

Whisper checkpoints name a few decoder cross-attention heads whose attention follows the
speech closely (``alignment_heads``: the CTranslate2 ``config.json`` ships them, and
:mod:`app.inference.ct2_convert` copies them into ``generation_config``). As
openai-whisper's ``timing.py`` (and transformers' ``_extract_token_timestamps``) do, the
window's text tokens are run through the decoder once more, teacher-forced, and the
attention of those heads over the window's real audio frames (20 ms each: 30 s map onto
1500 encoder positions) is turned into one time per token:

1. softmax over the real frames only, then a z-score per head and frame across tokens;
2. a median filter (width 7) along the frames;
3. the heads averaged into one tokens x frames matrix, and dynamic time warping on its
   negation: the monotonic path through the most attended cells;
4. the frame where the path first reaches a token is that token's start; the next
   token's start (the last one: the end-of-text row) is its end.

Tokens are then grouped into words (:func:`group_words`): a word starts at a token with
a leading space (languages without spaces: every complete unicode character sequence a
token run decodes to), punctuation joins its neighbour the way openai-whisper's
``merge_punctuations`` does.

DTW: `dtw-python <https://dynamictimewarp.github.io/>`_ (compiled core, takes the cost
matrix directly; its ``symmetric1`` step pattern is openai-whisper's diagonal / down /
right step of unit weight). Median filter: scipy (a dependency of dtw-python).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.inference.chunking import SAMPLE_RATE

#: Encoder frames per second (30 s of audio -> 1500 positions): one frame is 20 ms.
FRAMES_PER_SECOND = 50
MEDIAN_FILTER_WIDTH = 7
#: openai-whisper's defaults for merge_punctuations
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
#: Languages written without spaces between words: one "word" per character run.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
_REPLACEMENT = "\ufffd"
#: A 20 ms frame is sound when its RMS is above this fraction of the window's loud frames
#: (99th percentile) and above -60 dBFS (see :func:`snap_to_sound`).
SOUND_FRACTION = 0.1
SILENCE_RMS = 1e-3
#: Silences up to this long inside a word (stop consonants) do not split its sound.
MAX_GAP_S = 0.15


@dataclass(frozen=True)
class Word:
    word: str  # with its leading space, as the tokens decode (the segment text is the words joined)
    start: float  # seconds in the whole file
    end: float

    def to_dict(self) -> dict:
        return {"word": self.word, "start": self.start, "end": self.end}


def token_boundaries(scores: np.ndarray, num_frames: int, *, medfilt_width: int = MEDIAN_FILTER_WIDTH) -> np.ndarray:
    """Seconds (in the window) where each row's token starts, from alignment-head attention.

    ``scores``: (heads, rows, frames) scaled attention logits (before softmax) of the
    alignment heads, one row per predicted text token plus a last row for the end of
    text; ``num_frames``: how many encoder frames hold real audio. Returns ``rows`` times,
    non-decreasing: row ``i`` starts at ``times[i]`` and ends at ``times[i + 1]``.
    """
    import dtw
    from scipy.ndimage import median_filter

    rows = scores.shape[1]
    num_frames = max(1, min(int(num_frames), scores.shape[-1]))
    weights = scores[:, :, :num_frames].astype(np.float64)
    weights = np.exp(weights - weights.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = (weights - mean) / np.maximum(std, 1e-10)
    if medfilt_width > 1 and num_frames > medfilt_width // 2:
        # along the frames only; "mirror" is torch's reflect padding that openai-whisper uses
        weights = median_filter(weights, size=(1, 1, medfilt_width), mode="mirror")
    matrix = weights.mean(axis=0)
    if rows == 1:
        return np.zeros(1)
    path = dtw.dtw(-matrix, step_pattern=dtw.symmetric1)
    text_index, time_index = np.asarray(path.index1), np.asarray(path.index2)
    first = np.diff(text_index, prepend=-1).astype(bool)  # where the path reaches each row
    return time_index[first] / FRAMES_PER_SECOND


def snap_to_sound(
    spans: Sequence[tuple[float, float]], audio: np.ndarray, starts_word: Sequence[bool] | None = None
) -> list[tuple[float, float]]:
    """The text tokens' (start, end) in the window (in order) fitted to the sound around them.

    DTW gives every frame to some token, so a pause before a word often goes to that word
    (with the tail of the word before), and a start can land a few frames into the word.
    Each span is narrowed to its main stretch of sound (runs of sound frames closer than
    :data:`MAX_GAP_S` count as one; the longest run is the token's), and when that stretch
    touches an edge of the span, it is followed on past that edge while the sound lasts,
    but never into the neighbouring text tokens' spans. The idea of stable-ts' silence
    suppression, on frame energy.

    The timestamp tokens between segments also get frames from DTW, and now and then the
    whole of a word (the word's own span shrinks to nothing). So a token that begins a word
    (``starts_word``) and has no sound in its span takes the stretch of sound nearest to it
    between the previous token and the next one. Any other span without sound keeps its times.
    """
    hop = SAMPLE_RATE // FRAMES_PER_SECOND
    frames = len(audio) // hop
    if frames == 0:
        return list(spans)
    rms = np.sqrt(np.mean(np.square(audio[: frames * hop].reshape(frames, hop), dtype=np.float64), axis=1))
    voiced = rms > max(SOUND_FRACTION * float(np.percentile(rms, 99)), SILENCE_RMS)
    max_gap = round(MAX_GAP_S * FRAMES_PER_SECOND)
    out: list[tuple[float, float]] = []
    floor = 0  # frames before this belong to the previous token
    for n, (start, end) in enumerate(spans):
        first = min(round(start * FRAMES_PER_SECOND), frames)
        last = min(max(round(end * FRAMES_PER_SECOND), first), frames)
        ceiling = min(round(spans[n + 1][0] * FRAMES_PER_SECOND), frames) if n + 1 < len(spans) else frames
        searching = starts_word is not None and starts_word[n] and not voiced[first:last].any()
        if searching:  # the word's sound went to a timestamp token: look around it
            first, last = floor, max(ceiling, floor)
        sound = np.flatnonzero(voiced[first:last])
        if searching and sound.size and ceiling < frames and voiced[ceiling]:
            # sound running on into the next token's span is that token's
            own = np.flatnonzero(~voiced[first + sound[0] : ceiling])
            sound = sound[: np.searchsorted(sound, own[-1] + sound[0])] if own.size else sound[:0]
        if sound.size:
            # split where two sound frames are more than max_gap apart; keep the longest run
            breaks = np.flatnonzero(np.diff(sound) > max_gap + 1)
            run_starts = np.concatenate(([0], breaks + 1))
            run_ends = np.concatenate((breaks, [sound.size - 1]))
            if searching:  # the stretch nearest to where DTW put the word
                raw = round(start * FRAMES_PER_SECOND) - first
                k = int(np.argmin(np.maximum(sound[run_starts] - raw, 0) + np.maximum(raw - sound[run_ends], 0)))
            else:
                k = int(np.argmax(sound[run_ends] - sound[run_starts]))
            a, b = first + int(sound[run_starts[k]]), first + int(sound[run_ends[k]]) + 1
            if a == first:
                while a - 1 >= floor and voiced[a - 1]:
                    a -= 1
            if b == last:
                while b < ceiling and voiced[b]:
                    b += 1
            start, end = a / FRAMES_PER_SECOND, b / FRAMES_PER_SECOND
            floor = b
        else:
            floor = max(floor, min(round(end * FRAMES_PER_SECOND), frames))
        out.append((float(start), float(end)))
    return out


def split_units(tokens: Sequence[int], decode: Callable[[list[int]], str], *, spaces: bool = True) -> list[list[int]]:
    """Indices into ``tokens`` grouped into words (openai-whisper's ``split_to_word_tokens``).

    Tokens are first grouped into runs that decode to whole unicode characters; with
    ``spaces`` runs are joined into words, a new word starting at a leading space or at
    punctuation.
    """
    full = decode(list(tokens))
    runs: list[list[int]] = []
    texts: list[str] = []
    current: list[int] = []
    offset = 0
    for i in range(len(tokens)):
        current.append(i)
        text = decode([tokens[j] for j in current])
        if _REPLACEMENT not in text or full[offset + text.index(_REPLACEMENT) :][:1] == _REPLACEMENT:
            runs.append(current)
            texts.append(text)
            current = []
            offset += len(text)
    if current:  # an incomplete character at the very end
        runs.append(current)
        texts.append(decode([tokens[j] for j in current]))
    if not spaces:
        return runs
    words: list[list[int]] = []
    word_texts: list[str] = []
    for run, text in zip(runs, texts, strict=True):
        if not words or text.startswith(" ") or text.strip() in string.punctuation:
            words.append(list(run))
            word_texts.append(text)
        else:
            words[-1].extend(run)
            word_texts[-1] += text
    return words


def group_words(
    tokens: Sequence[int],
    times: Sequence[tuple[float, float]],
    decode: Callable[[list[int]], str],
    *,
    language: str | None = None,
) -> list[Word]:
    """Words with times from text tokens and each token's (start, end).

    A word's time is that of its own tokens; punctuation is then attached to its neighbour
    (before: ``"'“¿([{-``; after: ``"'.,!?:”)]}`` and their CJK forms) without moving the
    neighbour's times, as openai-whisper does. The words' texts joined equal ``decode(tokens)``.
    """
    if not tokens:
        return []
    spaces = (language or "").lower() not in NO_SPACE_LANGUAGES
    units = split_units(tokens, decode, spaces=spaces)
    words = [decode([tokens[i] for i in unit]) for unit in units]
    starts = [times[unit[0]][0] for unit in units]
    ends = [times[unit[-1]][1] for unit in units]
    # prepended punctuation joins the following word
    j = len(words) - 1
    for i in range(len(words) - 2, -1, -1):
        if words[i].startswith(" ") and words[i].strip() and words[i].strip() in PREPEND_PUNCTUATIONS:
            words[j] = words[i] + words[j]
            words[i] = ""
        else:
            j = i
    # appended punctuation joins the previous word
    i = 0
    for j in range(1, len(words)):
        if words[i] and not words[i].endswith(" ") and words[j] and words[j] in APPEND_PUNCTUATIONS:
            words[i] += words[j]
            words[j] = ""
        else:
            i = j
    return [Word(w, s, e) for w, s, e in zip(words, starts, ends, strict=True) if w]


def fit_words(words: Sequence[Word], start: float, end: float) -> list[Word]:
    """``words`` made monotonic, clamped to ``[start, end]`` and rounded to milliseconds.

    Also openai-whisper's hack for the boundary words: a first or last word that lasts
    more than twice the median word (capped at 1.4 s) is cut to that long, on the side of
    the segment boundary (DTW tends to stretch them over the pause next to them).
    """
    if not words:
        return []
    durations = [w.end - w.start for w in words if w.end > w.start]
    median = float(np.median(durations)) if durations else 0.0
    max_duration = min(0.7, median) * 2 if median > 0 else 0.0
    out: list[Word] = []
    last = start
    for k, w in enumerate(words):
        s, e = w.start, w.end
        if max_duration and e - s > max_duration:
            if k == 0:
                s = max(s, e - max_duration)
            elif k == len(words) - 1:
                e = min(e, s + max_duration)
        s = min(max(s, last, start), end)
        e = min(max(e, s), end)
        out.append(Word(w.word, round(s, 3), round(e, 3)))
        last = s
    return out
