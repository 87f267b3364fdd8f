"""The model executor: features + ``generate`` for a batch of windows, and the merge.

:class:`WhisperRunner` is the only code that touches torch. It is called from one
native worker thread (see :mod:`app.inference.batcher`) and holds a lock around the
model so that nothing else can run it concurrently.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from gevent.monkey import get_original

from app.inference.alignment import Word, fit_words, group_words, snap_to_sound, token_boundaries
from app.inference.chunking import SAMPLE_RATE, Chunk
from app.inference.continuation import TIME_PRECISION, complete_early_endings
from app.inference.decoding import DecodingRules, GreedyDecoder
from app.inference.fallback import redecode_loops
from app.inference.merge import RawSegment, parse_segments
from app.inference.model_loader import LoadedModel
from app.inference.options import TranscribeOptions

#: Per token of a window (timestamp and special tokens: ``None``), its (start, end) in seconds.
TokenTimes = tuple[tuple[float, float] | None, ...]


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    #: word timings (only when word timestamps were asked for)
    words: tuple[Word, ...] | None = None

    def to_dict(self) -> dict:
        out: dict = {"timestamp": [self.start, self.end], "text": self.text}
        if self.words is not None:
            out["words"] = [w.to_dict() for w in self.words]
        return out


@dataclass
class Transcription:
    text: str
    segments: list[Segment] = field(default_factory=list)
    audio_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"text": self.text, "chunks": [s.to_dict() for s in self.segments]}

    @property
    def words(self) -> list[Word]:
        """Every segment's words in order (empty without word timestamps)."""
        return [w for s in self.segments for w in (s.words or ())]


@dataclass(frozen=True)
class DecodedChunk:
    """What the model produced for one window: its token ids (timestamps included)."""

    chunk: Chunk
    tokens: tuple[int, ...]
    #: per token, its times in the window (with word timestamps only)
    times: TokenTimes | None = None


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
        self._aligner: GreedyDecoder | None = self._lean  # built on first use with DECODER=generate

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

    def token_times(
        self,
        audios: Sequence[np.ndarray],
        results: Sequence[tuple[int, ...]],
        options: Sequence[TranscribeOptions] | None = None,
    ) -> list[TokenTimes | None]:
        """Per window that asked for word timestamps, each token's (start, end) in the window.

        The windows' final tokens (after :mod:`~app.inference.continuation` and
        :mod:`~app.inference.fallback`) are run through the decoder once more, teacher-forced:
        ``<|startoftranscript|> [language task]`` + the window's text *and timestamp* tokens
        + ``<|endoftext|>``, and the alignment heads' attention gives the times
        (:mod:`app.inference.alignment`). openai-whisper aligns the text tokens alone (after
        ``<|notimestamps|>``); with the timestamp tokens kept, as transformers'
        ``return_token_timestamps`` does, the pauses between segments go to the timestamp
        tokens instead of stretching the words next to them (isolated words spoken at known
        times, before the sound fitting of :func:`~app.inference.alignment.snap_to_sound`:
        0.3-2.6 s off with the text tokens alone, within 0.25 s with the timestamps).
        Windows that did not ask get ``None`` and cost nothing.
        """
        out: list[TokenTimes | None] = [None] * len(results)
        wanted = [i for i, o in enumerate(options or ()) if o.word_timestamps]
        if not wanted:
            return out
        import torch

        lm = self.loaded
        gen = lm.model.generation_config
        aligner = self._aligner_decoder()
        heads = self._alignment_heads()
        sequences, aligned_positions = [], []
        for i in wanted:
            prompt = self._alignment_prompt(results[i], gen)
            # text and timestamp tokens (special tokens a generate() output may hold are left out)
            positions = [k for k, tok in enumerate(results[i]) if tok < self._eot or tok >= self._timestamp_begin]
            positions = positions[: aligner.max_positions - len(prompt) - 1]
            aligned_positions.append(positions)
            sequences.append(prompt + [results[i][k] for k in positions] + [self._eot])
        features = lm.feature_extractor(
            [audios[i] for i in wanted], sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=False
        ).input_features.to(lm.device, lm.dtype)
        with self._lock, torch.inference_mode():
            scores = aligner.alignment_scores(features, sequences, heads)
        for i, row_scores, seq, positions in zip(wanted, scores, sequences, aligned_positions, strict=True):
            prompt_len = len(seq) - len(positions) - 1
            # the row that predicts a token is the one before it: from the last prompt token on
            rows = row_scores[:, prompt_len - 1 : len(seq) - 1].cpu().numpy()
            frames = round(len(audios[i]) / SAMPLE_RATE / TIME_PRECISION)
            bounds = token_boundaries(rows, frames)
            times: list[tuple[float, float] | None] = [None] * len(results[i])
            # text tokens with a sound of their own (punctuation has none) are fitted to the audio
            spoken: list[int] = []
            spans: list[tuple[float, float]] = []
            starts_word: list[bool] = []
            for n, k in enumerate(positions):
                if results[i][k] < self._eot:
                    times[k] = (float(bounds[n]), float(bounds[n + 1]))
                    piece = self._text([results[i][k]])
                    if piece.strip() and not all(c in string.punctuation for c in piece.strip()):
                        spoken.append(k)
                        spans.append((float(bounds[n]), float(bounds[n + 1])))
                        starts_word.append(piece.startswith(" "))
            for k, span in zip(spoken, snap_to_sound(spans, audios[i], starts_word), strict=True):
                times[k] = span
            out[i] = tuple(times)
        return out

    def _aligner_decoder(self) -> GreedyDecoder:
        if self._aligner is None:
            gen = self.loaded.model.generation_config
            self._aligner = GreedyDecoder(self.loaded.model, DecodingRules.from_generation_config(gen))
        return self._aligner

    def _alignment_heads(self) -> list[tuple[int, int]]:
        """``generation_config.alignment_heads``; without them, openai-whisper's default:
        every head of the decoder's second half."""
        heads = getattr(self.loaded.model.generation_config, "alignment_heads", None)
        if heads:
            return [(int(layer), int(head)) for layer, head in heads]
        config = self.loaded.model.config
        layers, per_layer = config.decoder_layers, config.decoder_attention_heads
        return [(layer, head) for layer in range(layers // 2, layers) for head in range(per_layer)]

    def _alignment_prompt(self, tokens: Sequence[int], gen) -> list[int]:
        """``<|startoftranscript|>`` [language, task], as the window was decoded."""
        prompt = [int(gen.decoder_start_token_id)]
        if getattr(gen, "is_multilingual", False):
            languages = set((getattr(gen, "lang_to_id", None) or {}).values())
            tasks = getattr(gen, "task_to_id", None) or {}
            prompt += [tok for tok in tokens if tok in languages][:1]
            task = next((tok for tok in tokens if tok in tasks.values()), tasks.get("transcribe"))
            if task is not None:
                prompt.append(int(task))
        return prompt

    def parse(self, decoded: DecodedChunk) -> list[RawSegment]:
        """One window's tokens as timed segments (whole-file seconds)."""
        return parse_segments(decoded.tokens, decoded.chunk, self._timestamp_begin, TIME_PRECISION, times=decoded.times)

    def to_segment(self, raw: RawSegment, audio_seconds: float, *, language: str | None = None) -> Segment | None:
        """Decode a merged segment's text and clamp its times to the audio; None if silent.

        With token times (word timestamps), the segment's words, inside its bounds.
        """
        text = self._text(raw.tokens)
        if not text.strip():
            return None
        start = round(min(max(raw.start, 0.0), audio_seconds), 3)
        end = round(min(max(raw.end, start), audio_seconds), 3)
        words = None
        if raw.times is not None:
            timed = [(tok, t) for tok, t in zip(raw.tokens, raw.times, strict=True) if tok < self._eot and t]
            grouped = group_words([tok for tok, _ in timed], [t for _, t in timed], self._text, language=language)
            words = tuple(fit_words(grouped, start, end))
        return Segment(start, end, text, words)
