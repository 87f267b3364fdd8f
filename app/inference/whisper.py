"""The model executor: features + ``generate`` for a batch of windows, and the merge.

:class:`WhisperRunner` is the only code that touches torch. It is called from one
native worker thread (see :mod:`app.inference.batcher`) and holds a lock around the
model so that nothing else can run it concurrently.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from gevent.monkey import get_original

from app.inference.alignment import Word, fit_words, group_words, snap_to_sound, token_boundaries
from app.inference.chunking import SAMPLE_RATE, Chunk
from app.inference.continuation import TIME_PRECISION, complete_early_endings
from app.inference.decoding import DecodingRules, GreedyDecoder
from app.inference.fallback import redecode_loops
from app.inference.merge import RawSegment, parse_segments
from app.inference.model_loader import LoadedModel
from app.inference.options import DEFAULT_OPTIONS, TranscribeOptions

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
    #: ISO 639-1 code of the request's language (forced, or detected; ``en`` on English-only models)
    language: str | None = None

    def to_dict(self) -> dict:
        out = {"text": self.text, "chunks": [s.to_dict() for s in self.segments]}
        if self.language is not None:
            out["language"] = self.language
        return out

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


@dataclass(frozen=True)
class WindowResult:
    """One window's tokens and the language they are in (``None``: English-only model)."""

    tokens: tuple[int, ...]
    language: str | None = None
    #: how sure the detection was (1.0 when the request named the language)
    language_probability: float = 1.0


#: In a prompt: the language token still to be detected (:meth:`WhisperRunner._run`).
DETECT = -1


@dataclass(frozen=True)
class _Plan:
    """How one window is decoded: its whole decoder prompt and its temperature."""

    prompt: tuple[int, ...]
    temperature: float

    @property
    def detects(self) -> bool:
        return DETECT in self.prompt

    def with_language(self, token: int) -> _Plan:
        at = self.prompt.index(DETECT)
        return replace(self, prompt=(*self.prompt[:at], token, *self.prompt[at + 1 :]))


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
        self.multilingual = bool(getattr(gen, "is_multilingual", False))
        self._sot = int(gen.decoder_start_token_id)
        self._sot_prev = tok.convert_tokens_to_ids("<|startofprev|>")
        #: language code -> token id (empty for English-only models)
        self._language_tokens = (
            {name.strip("<|>"): int(i) for name, i in (getattr(gen, "lang_to_id", None) or {}).items()}
            if self.multilingual
            else {}
        )
        self._language_codes = {i: code for code, i in self._language_tokens.items()}
        self._task_tokens = {task: int(i) for task, i in (getattr(gen, "task_to_id", None) or {}).items()}
        self._language_ids = None
        self._lean: GreedyDecoder | None = None
        if decoder == "lean":
            import torch

            self._lean = GreedyDecoder(
                loaded.model,
                DecodingRules.from_generation_config(gen),
                int8_projection=int8_projection and loaded.device.type == "cpu",
            )
            self._language_ids = torch.tensor(list(self._language_tokens.values()), device=loaded.device)
        #: OpenAI keeps the last n_ctx/2 - 1 tokens of a prompt (223 of Whisper's 448 positions)
        self._max_prompt_tokens = loaded.model.config.max_target_positions // 2 - 1
        self._aligner: GreedyDecoder | None = self._lean  # built on first use with DECODER=generate

    @property
    def decoder_name(self) -> str:
        return "lean" if self._lean is not None else "generate"

    @property
    def languages(self) -> frozenset[str]:
        """The language codes this model knows (``{"en"}`` for English-only models)."""
        return frozenset(self._language_tokens) if self.multilingual else frozenset({"en"})

    def generate(
        self,
        audios: Sequence[np.ndarray],
        needed_s: Sequence[float] | None = None,
        options: Sequence[TranscribeOptions] | None = None,
    ) -> list[tuple[int, ...]]:
        """Token ids (with timestamp tokens) for each <= 30 s window in ``audios``
        (:meth:`decode_windows` without the languages)."""
        return [r.tokens for r in self.decode_windows(audios, needed_s, options)]

    def decode_windows(
        self,
        audios: Sequence[np.ndarray],
        needed_s: Sequence[float] | None = None,
        options: Sequence[TranscribeOptions] | None = None,
    ) -> list[WindowResult]:
        """Tokens and language for each <= 30 s window in ``audios``.

        ``options``: each window's request options (``None``: the defaults for all).
        A window without a language on a multilingual model gets its language detected
        from its own audio, in the same pass (one decoder step on its encoder output),
        and is decoded in it.

        Windows whose prompts differ in length (a request with a ``prompt`` text next to
        one without) run as separate sub-batches, one per prompt length: the lean loop
        needs one prompt length per batch. Windows of equal length share one batch even
        when their languages, tasks or temperatures differ.

        ``needed_s``: per window, how far into it the text is needed (the window minus its
        right stride); windows whose decoding stopped well before that are decoded to the
        end (see :mod:`app.inference.continuation`). ``None``: one plain pass.
        """
        count = len(audios)
        opts = list(options) if options is not None else [DEFAULT_OPTIONS] * count
        plans = [self._plan(o) for o in opts]
        tokens: list[tuple[int, ...]] = [()] * count
        languages: list[tuple[str | None, float]] = [(None, 1.0)] * count
        for idx in _groups(range(count), lambda i: len(plans[i].prompt)):
            # seed None: a request sampled at a temperature gets fresh draws each time (as OpenAI's API)
            decoded, resolved, found = self._run([audios[i] for i in idx], [plans[i] for i in idx], None)
            for i, t, plan, lang in zip(idx, decoded, resolved, found, strict=True):
                tokens[i], plans[i], languages[i] = t, plan, lang
        # loop fallback and continuation, per group of windows decoded the same way
        for idx in _groups(range(count), lambda i: plans[i]):
            plan = plans[idx[0]]
            group = [audios[i] for i in idx]

            def decode(audios: Sequence[np.ndarray], temperature: float, seed: int | None, plan=plan):
                return self._run(audios, [replace(plan, temperature=temperature)] * len(audios), seed)[0]

            def checked(audios: Sequence[np.ndarray], first=None, plan=plan, decode=decode):
                results = first if first is not None else decode(audios, plan.temperature, None)
                if plan.temperature > 0:  # sampled on purpose: no greedy-loop fallback
                    return results
                results, fallbacks = redecode_loops(audios, results, decode, self._text)
                self.fallbacks += fallbacks
                return results

            results = checked(group, [tokens[i] for i in idx])
            if needed_s is not None:
                results, redecodes = complete_early_endings(
                    group, results, [needed_s[i] for i in idx], checked, self._timestamp_begin
                )
                self.redecodes += redecodes
            for i, t in zip(idx, results, strict=True):
                tokens[i] = t
        return [WindowResult(t, *lang) for t, lang in zip(tokens, languages, strict=True)]

    def _plan(self, options: TranscribeOptions) -> _Plan:
        """The decoder prompt for ``options``: ``[<|startofprev|> prompt...] <|startoftranscript|>``,
        then on multilingual models the language (or :data:`DETECT`) and the task token."""
        if not self.multilingual and (options.task != "transcribe" or options.language not in (None, "en")):
            raise ValueError(f"{self.loaded.model.name_or_path} is English-only: no {options.language}/{options.task}")
        prompt: list[int] = []
        if options.prompt and options.prompt.strip():
            ids = self.loaded.tokenizer.encode(" " + options.prompt.strip(), add_special_tokens=False)
            prompt = [self._sot_prev, *ids[-self._max_prompt_tokens :]]
        prompt.append(self._sot)
        if self.multilingual:
            language = DETECT if options.language is None else self._language_tokens[options.language]
            prompt += [language, self._task_tokens[options.task]]
        return _Plan(tuple(prompt), float(options.temperature))

    def _text(self, tokens: Sequence[int]) -> str:
        return self.loaded.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def _decode(
        self, audios: Sequence[np.ndarray], temperature: float = 0.0, seed: int | None = 0
    ) -> list[tuple[int, ...]]:
        """Tokens per window with the default options at ``temperature`` (no fallback)."""
        plan = replace(self._plan(DEFAULT_OPTIONS), temperature=temperature)
        return self._run(audios, [plan] * len(audios), seed)[0]

    def _run(
        self, audios: Sequence[np.ndarray], plans: Sequence[_Plan], seed: int | None = 0
    ) -> tuple[list[tuple[int, ...]], list[_Plan], list[tuple[str | None, float]]]:
        """One batch (all prompts of one length): tokens, the plans with their detected
        language filled in, and each window's (language, probability).

        ``seed``: for the windows sampled at a temperature (``None``: a fresh random seed).
        """
        import torch

        lm = self.loaded
        features = lm.feature_extractor(
            list(audios), sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=False
        ).input_features.to(lm.device, lm.dtype)
        temperatures = [p.temperature for p in plans]
        with self._lock, torch.inference_mode():
            generator = None
            if any(t > 0 for t in temperatures):
                generator = torch.Generator(lm.device)
                if seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(seed)
            if self._lean is None:
                return self._generate(features, plans, generator)
            cross = self._lean.encode(features)
            prompts = torch.tensor([p.prompt for p in plans], dtype=torch.long, device=lm.device)
            plans, languages = self._detect(plans, cross, prompts)
            temperature = (
                torch.tensor(temperatures, device=lm.device) if len(set(temperatures)) > 1 else temperatures[0]
            )
            rows = self._lean.decode(cross, prompts, self.max_new_tokens, temperature=temperature, generator=generator)
        return [self._strip(row) for row in rows], plans, languages

    def _detect(self, plans: Sequence[_Plan], cross, prompts) -> tuple[list[_Plan], list[tuple[str | None, float]]]:
        """Fill in the language of the windows that detect it (``prompts`` is updated in place)."""
        plans = list(plans)
        if not self.multilingual:
            return plans, [("en", 1.0)] * len(plans)
        languages: list[tuple[str | None, float]] = [
            (None if p.detects else self._language_codes.get(p.prompt[-2]), 1.0) for p in plans
        ]
        if not any(p.detects for p in plans):
            return plans, languages
        probs = self._lean.language_probs(cross, self._sot, self._language_ids)
        best_p, best = probs.max(dim=-1)
        for row, plan in enumerate(plans):
            if plan.detects:
                token = int(self._language_ids[int(best[row])])
                prompts[row, plan.prompt.index(DETECT)] = token
                plans[row] = plan.with_language(token)
                languages[row] = (self._language_codes[token], round(float(best_p[row]), 4))
        return plans, languages

    def _generate(self, features, plans: Sequence[_Plan], generator):
        """transformers' ``generate`` (``DECODER=generate``, the reference path): one call per
        distinct plan; languages detected with the model's ``detect_language`` (a second encoder pass)."""
        import torch

        lm = self.loaded
        plans = list(plans)
        languages: list[tuple[str | None, float]] = [("en", 1.0) if not self.multilingual else (None, 1.0)] * len(plans)
        if self.multilingual:
            detect = [i for i, p in enumerate(plans) if p.detects]
            if detect:
                found = lm.model.detect_language(input_features=features[detect]).view(-1).tolist()
                for i, token in zip(detect, found, strict=True):
                    plans[i] = plans[i].with_language(int(token))
            languages = [(self._language_codes.get(p.prompt[-2]), 1.0) for p in plans]
        rows: list[tuple[int, ...]] = [()] * len(plans)
        for idx in _groups(range(len(plans)), lambda i: plans[i]):
            plan = plans[idx[0]]
            kwargs: dict = {}
            if plan.temperature > 0:
                kwargs = {"do_sample": True, "temperature": plan.temperature}
                torch.manual_seed(int(generator.initial_seed()))
            if self.multilingual:
                kwargs["language"] = self._language_codes[plan.prompt[-2]]
                kwargs["task"] = "translate" if plan.prompt[-1] == self._task_tokens["translate"] else "transcribe"
            if plan.prompt[0] == self._sot_prev:
                kwargs["prompt_ids"] = torch.tensor(plan.prompt[: plan.prompt.index(self._sot)], device=lm.device)
                kwargs["prompt_condition_type"] = "first-segment"
            out = lm.model.generate(features[idx], return_timestamps=True, max_new_tokens=self.max_new_tokens, **kwargs)
            sequences = out["sequences"] if isinstance(out, dict) else out
            for i, row in zip(idx, sequences.cpu(), strict=True):
                rows[i] = self._strip(row.tolist())
        return rows, plans, languages

    def _strip(self, ids: list[int]) -> tuple[int, ...]:
        while ids and ids[-1] == self._eot:
            ids.pop()
        return tuple(ids)

    def token_times(
        self,
        audios: Sequence[np.ndarray],
        decoded: Sequence[WindowResult],
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
        results = [r.tokens for r in decoded]
        out: list[TokenTimes | None] = [None] * len(results)
        opts = list(options or ())
        wanted = [i for i, o in enumerate(opts) if o.word_timestamps]
        if not wanted:
            return out
        import torch

        lm = self.loaded
        aligner = self._aligner_decoder()
        heads = self._alignment_heads()
        sequences, aligned_positions = [], []
        for i in wanted:
            prompt = self._alignment_prompt(decoded[i].language, opts[i].task)
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

    def _alignment_prompt(self, language: str | None, task: str) -> list[int]:
        """``<|startoftranscript|>`` [language, task], as the window was decoded (its detected
        or forced language; the request's ``prompt`` text is left out, as openai-whisper does)."""
        prompt = [self._sot]
        if self.multilingual and language is not None:
            prompt += [self._language_tokens[language], self._task_tokens[task]]
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


def _groups(items, key) -> list[list[int]]:
    """``items`` grouped by ``key``, in first-seen order (each group keeps its order)."""
    groups: dict = {}
    for i in items:
        groups.setdefault(key(i), []).append(i)
    return list(groups.values())
