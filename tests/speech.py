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
