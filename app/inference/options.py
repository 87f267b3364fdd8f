"""Per-request transcription options: what a client may ask of one transcription.

The HTTP layer builds one :class:`TranscribeOptions` per request and hands it to
:meth:`Engine.stream <app.inference.engine.Engine.stream>`; each of the request's windows
carries it to the model thread as a :class:`Window`. The defaults reproduce the
reference server's behaviour (greedy, transcribe, no prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.audio.vad import VadParams
from app.inference.chunking import Chunk


@dataclass(frozen=True)
class TranscribeOptions:
    #: ISO 639-1 code to force (``None``: the model's default / detection)
    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    #: text that conditions the decoder (OpenAI's ``prompt``)
    prompt: str | None = None
    #: 0: greedy (with the loop fallback); > 0: sampling at this temperature
    temperature: float = 0.0
    #: word-level timestamps from the alignment heads
    word_timestamps: bool = False
    #: skip long silences with voice activity detection before decoding
    vad: bool = False
    #: VAD tuning for this request (``None``: the server's VAD_* settings)
    vad_params: VadParams | None = None


DEFAULT_OPTIONS = TranscribeOptions()


@dataclass(frozen=True)
class Window:
    """One window of one request, as queued for the model."""

    chunk: Chunk
    options: TranscribeOptions = DEFAULT_OPTIONS
