"""Benchmark audio: espeak-ng reads known text; files are cached as 16 kHz mono PCM wav.

Every file is described by a list of (text, voice, words-per-minute) segments; its reference
transcript is the texts joined in order. The cache key covers the texts, the voices, the
speeds and the espeak-ng version, so changing any of them makes a new file.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from tests.speech import PASSAGE, SENTENCE, speak

TEXTS = Path(__file__).resolve().parent / "texts"


def _text(name: str) -> str:
    return (TEXTS / f"{name}.txt").read_text()


@dataclass(frozen=True)
class Segment:
    text: str
    voice: str = "en-us"
    speed: int = 165


@dataclass(frozen=True)
class AudioSpec:
    name: str
    description: str
    segments: tuple[Segment, ...]

    @property
    def reference(self) -> str:
        return "\n\n".join(seg.text.strip() for seg in self.segments)


@dataclass(frozen=True)
class BenchAudio:
    name: str
    description: str
    path: Path  # 16 kHz mono PCM16 wav
    reference: str
    seconds: float


def _first_words(text: str, words: int) -> str:
    """The shortest run of whole sentences from the start of ``text`` with at least ``words`` words."""
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    out: list[str] = []
    for sentence in sentences:
        out.append(sentence)
        if len(" ".join(out).split()) >= words:
            break
    return " ".join(out)


def specs() -> dict[str, AudioSpec]:
    passage = PASSAGE
    return {
        "warmup": AudioSpec("warmup", "two sentences (warm-up only, not timed)", (Segment(SENTENCE),)),
        "clip60": AudioSpec(
            "clip60",
            "first sentences of tests/data/passage.txt, en-us 165 wpm (concurrency clip)",
            (Segment(_first_words(passage, 180)),),
        ),
        "3min": AudioSpec(
            "3min",
            "tests/data/passage.txt (439 words), en-us at 130 wpm",
            (Segment(passage, "en-us", 130),),
        ),
        "20min": AudioSpec(
            "20min",
            "passage x4 (4 voices/speeds) + bench/texts/{ferry,bakery,station,library}.txt, 8 segments",
            (
                Segment(passage, "en-us", 165),
                Segment(_text("ferry"), "en-gb", 160),
                Segment(_text("bakery"), "en-us", 150),
                Segment(passage, "en+m3", 170),
                Segment(_text("station"), "en-gb-x-rp", 155),
                Segment(_text("library"), "en+m3", 160),
                Segment(passage, "en-gb", 150),
                Segment(passage, "en-us", 140),
            ),
        ),
    }


def _espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def _key(spec: AudioSpec) -> str:
    payload = {"v": _espeak_version(), "segments": [(s.text, s.voice, s.speed) for s in spec.segments]}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:12]


def make(spec: AudioSpec, out_dir: Path) -> BenchAudio:
    """Generate (or reuse) ``spec`` as ``out_dir/<name>-<key>.wav`` with its reference text beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wav = out_dir / f"{spec.name}-{_key(spec)}.wav"
    ref = wav.with_suffix(".txt")
    if not wav.is_file():
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            tmp_dir = Path(tmp)
            parts = [
                speak(seg.text, tmp_dir / f"{i:02d}.wav", voice=seg.voice, speed=seg.speed)
                for i, seg in enumerate(spec.segments)
            ]
            listing = tmp_dir / "list.txt"
            listing.write_text("".join(f"file '{p.name}'\n" for p in parts))
            partial = tmp_dir / "out.wav"
            subprocess.run(
                [
                    "ffmpeg",
                    "-nostdin",
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-y",
                    "-f",
                    "concat",
                    "-safe",
                    "0",
                    "-i",
                    str(listing),
                    "-ar",
                    "16000",
                    "-ac",
                    "1",
                    "-c:a",
                    "pcm_s16le",
                    str(partial),
                ],
                check=True,
                timeout=600,
            )
            partial.replace(wav)
    ref.write_text(spec.reference)
    return BenchAudio(spec.name, spec.description, wav, spec.reference, sf.info(str(wav)).duration)
