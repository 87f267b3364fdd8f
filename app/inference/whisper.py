"""The model executor: features + ``generate`` for a batch of windows, and the merge.

:class:`WhisperRunner` is the only code that touches torch. It is called from one
native worker thread (see :mod:`app.inference.batcher`) and holds a lock around the
model so that nothing else can run it concurrently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from gevent.monkey import get_original

from app.inference.chunking import SAMPLE_RATE, Chunk
from app.inference.continuation import TIME_PRECISION, complete_early_endings
from app.inference.decoding import DecodingRules, GreedyDecoder
from app.inference.fallback import redecode_loops
from app.inference.merge import RawSegment, parse_segments
from app.inference.model_loader import LoadedModel
from app.inference.options import TranscribeOptions


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str

    def to_dict(self) -> dict:
        return {"timestamp": [self.start, self.end], "text": self.text}


@dataclass
class Transcription:
    text: str
    segments: list[Segment] = field(default_factory=list)
    audio_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"text": self.text, "chunks": [s.to_dict() for s in self.segments]}


@dataclass(frozen=True)
class DecodedChunk:
    """What the model produced for one window: its token ids (timestamps included)."""

    chunk: Chunk
    tokens: tuple[int, ...]


class WhisperRunner:
    def __init__(
        self, loaded: LoadedModel, *, max_new_tokens: int, decoder: str = "lean", int8_projection: bool = False
    ):
        self.loaded = loaded
        self.max_new_tokens = max_new_tokens
        #: windows decoded again from their last timestamp (see continuation.py), in total
        self.redecodes = 0
        #: windows decoded again at a temperature because their text looped (fallback.py)
        self.fallbacks = 0
        # an OS lock even under gevent's monkey-patching: it is taken in native threads
        self._lock = get_original("_thread", "allocate_lock")()
        tok = loaded.tokenizer
        self._eot = tok.convert_tokens_to_ids("<|endoftext|>")
        self._timestamp_begin = tok.convert_tokens_to_ids("<|notimestamps|>") + 1
        gen = loaded.model.generation_config
        # The lean loop has no language detection: multilingual checkpoints use generate().
        self._lean: GreedyDecoder | None = None
        if decoder == "lean" and not getattr(gen, "is_multilingual", False):
            self._lean = GreedyDecoder(
                loaded.model,
                DecodingRules.from_generation_config(gen),
                int8_projection=int8_projection and loaded.device.type == "cpu",
            )
        self._prompt = [int(gen.decoder_start_token_id)]

    @property
    def decoder_name(self) -> str:
        return "lean" if self._lean is not None else "generate"

    def generate(
        self,
        audios: Sequence[np.ndarray],
        needed_s: Sequence[float] | None = None,
        options: Sequence[TranscribeOptions] | None = None,
    ) -> list[tuple[int, ...]]:
        """Token ids (with timestamp tokens) for each <= 30 s window in ``audios``.

        ``options``: each window's request options (``None``: the defaults for all).

        ``needed_s``: per window, how far into it the text is needed (the window minus its
        right stride); windows whose decoding stopped well before that are decoded to the
        end (see :mod:`app.inference.continuation`). ``None``: one plain pass.
        """
        results = self._decode_checked(audios)
        if needed_s is not None:
            results, redecodes = complete_early_endings(
                audios, results, needed_s, self._decode_checked, self._timestamp_begin
            )
            self.redecodes += redecodes
        return results

    def _decode_checked(self, audios: Sequence[np.ndarray]) -> list[tuple[int, ...]]:
        """Greedy tokens per window, looping windows re-decoded (:mod:`app.inference.fallback`)."""
        results, fallbacks = redecode_loops(audios, self._decode(audios), self._decode, self._text)
        self.fallbacks += fallbacks
        return results

    def _text(self, tokens: Sequence[int]) -> str:
        return self.loaded.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def _decode(self, audios: Sequence[np.ndarray], temperature: float = 0.0, seed: int = 0) -> list[tuple[int, ...]]:
        import torch

        lm = self.loaded
        features = lm.feature_extractor(
            list(audios), sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=False
        ).input_features.to(lm.device, lm.dtype)
        with self._lock, torch.inference_mode():
            generator = torch.Generator(lm.device).manual_seed(seed) if temperature > 0 else None
            if self._lean is not None:
                rows = self._lean(
                    features, self._prompt, self.max_new_tokens, temperature=temperature, generator=generator
                )
                return [self._strip(row) for row in rows]
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
            if temperature > 0:
                torch.manual_seed(seed)
            out = lm.model.generate(features, return_timestamps=True, max_new_tokens=self.max_new_tokens, **sampling)
        sequences = out["sequences"] if isinstance(out, dict) else out
        return [self._strip(row.tolist()) for row in sequences.cpu()]

    def _strip(self, ids: list[int]) -> tuple[int, ...]:
        while ids and ids[-1] == self._eot:
            ids.pop()
        return tuple(ids)

    def parse(self, decoded: DecodedChunk) -> list[RawSegment]:
        """One window's tokens as timed segments (whole-file seconds)."""
        return parse_segments(decoded.tokens, decoded.chunk, self._timestamp_begin, TIME_PRECISION)

    def to_segment(self, raw: RawSegment, audio_seconds: float) -> Segment | None:
        """Decode a merged segment's text and clamp its times to the audio; None if silent."""
        text = self._text(raw.tokens)
        if not text.strip():
            return None
        start = round(min(max(raw.start, 0.0), audio_seconds), 3)
        end = round(min(max(raw.end, start), audio_seconds), 3)
        return Segment(start, end, text)
