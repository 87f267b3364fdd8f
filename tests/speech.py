"""Real speech for tests: espeak-ng reads known text; WER and alignment helpers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import jiwer

DATA = Path(__file__).parent / "data"
PASSAGE = (DATA / "passage.txt").read_text()
SENTENCE = (
    "The old lighthouse stood on a rocky island at the mouth of the harbor. "
    "The keeper lived alone in a small stone cottage beside the tower."
)

#: Word error rate a whole-file transcript of the passage (~146 s, 439 words) must stay under.
#: tiny.en makes ~9% errors on espeak-ng's voice by itself (bench/RESULTS.md: 9.3% for this
#: server, 8.4-11.6% for faster-whisper on the same weights), while one lost or doubled 20 s
#: window step is ~60 words, 14% of the passage: 15% passes the model's own mistakes and fails
#: any lost or doubled window.
MAX_PASSAGE_WER = 0.15


def speak(text: str, out: Path, *, voice: str = "en-us", speed: int = 165) -> Path:
    """Write espeak-ng's reading of ``text`` to ``out`` (wav, 22.05 kHz mono)."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True)
    return out


def convert(src: Path, out: Path, *args: str) -> Path:
    """Re-encode with ffmpeg (format from ``out``'s suffix)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), *args, str(out)], check=True
    )
    return out


def normalize(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z' ]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(normalize(reference), normalize(hypothesis))


def longest_runs(reference: str, hypothesis: str) -> tuple[int, int]:
    """Longest run of consecutive deleted and of consecutive inserted words.

    Model mistakes are mostly substitutions of one or two words. A window border that
    drops speech shows up as a long deletion run; one that doubles speech as a long
    insertion run.
    """
    out = jiwer.process_words(normalize(reference), normalize(hypothesis))
    longest_del = longest_ins = 0
    for chunk in out.alignments[0]:
        if chunk.type == "delete":
            longest_del = max(longest_del, chunk.ref_end_idx - chunk.ref_start_idx)
        elif chunk.type == "insert":
            longest_ins = max(longest_ins, chunk.hyp_end_idx - chunk.hyp_start_idx)
    return longest_del, longest_ins


def sound_span(audio, rate: int = 16_000) -> tuple[float, float]:
    """First and last 10 ms frame of ``audio`` above 5% of its loudest frame's RMS (seconds)."""
    import numpy as np

    hop = rate // 100
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    loud = np.flatnonzero(rms > 0.05 * rms.max())
    return loud[0] / 100, (loud[-1] + 1) / 100


def place_words(words, starts, total_s: float, workdir: Path, *, speed: int = 150):
    """16 kHz audio of ``total_s`` seconds with each word spoken (espeak-ng) so that its sound
    begins at the matching ``starts`` second; silence elsewhere. Returns the samples."""
    import numpy as np

    from app.audio.decode import decode_audio

    out = np.zeros(int(total_s * 16_000), dtype=np.float32)
    for i, (word, start) in enumerate(zip(words, starts, strict=True)):
        clip = decode_audio(speak(word, workdir / f"word-{word}-{i}.wav", speed=speed).read_bytes(), max_seconds=60)
        onset, _ = sound_span(clip)
        at = round((start - onset) * 16_000)
        out[at : at + len(clip)] += clip[: len(out) - at]
    return out


def spoken_words(sentences, workdir: Path, *, pause_s: float = 0.8, gap_s: float = 0.06, speed: int = 160):
    """Continuous speech with a known start for every word.

    Each word is read alone by espeak-ng and trimmed to its sound (:func:`sound_span`); a
    sentence is its words back to back (``gap_s`` apart), sentences are ``pause_s`` apart,
    with ``pause_s`` of silence before and after. Returns the 16 kHz samples and, per word,
    ``(word, start second)``.
    """
    import numpy as np

    from app.audio.decode import decode_audio

    rate = 16_000
    parts = [np.zeros(round(pause_s * rate), dtype=np.float32)]
    truth: list[tuple[str, float]] = []
    t = pause_s
    for s, sentence in enumerate(sentences):
        for i, word in enumerate(sentence.split()):
            clip = decode_audio(speak(word, workdir / f"seq-{s}-{i}.wav", speed=speed).read_bytes(), max_seconds=60)
            on, off = sound_span(clip)
            clip = clip[round(on * rate) : round(off * rate)]
            truth.append((normalize(word), t))
            gap = np.zeros(round(gap_s * rate), dtype=np.float32)
            parts += [clip, gap]
            t += (len(clip) + len(gap)) / rate
        parts.append(np.zeros(round(pause_s * rate), dtype=np.float32))
        t += pause_s
    return np.concatenate(parts), truth


#: Known sentences read by espeak-ng's other voices (the English SENTENCE, translated).
SENTENCES = {
    "de": "Der alte Leuchtturm stand auf einer felsigen Insel vor dem Hafen. "
    "Der Wärter wohnte allein in einem kleinen Haus aus Stein.",
    "es": "El viejo faro estaba en una isla rocosa frente al puerto. "
    "El guardián vivía solo en una pequeña casa de piedra.",
}


def normalize_letters(text: str) -> str:
    """Lower case, letters of any script kept (ä, ñ...), punctuation and digits dropped."""
    text = re.sub(r"[^\w\s]|[\d_]", " ", text.casefold())
    return re.sub(r"\s+", " ", text).strip()


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate over :func:`normalize_letters` text (any language)."""
    return jiwer.cer(normalize_letters(reference), normalize_letters(hypothesis))
