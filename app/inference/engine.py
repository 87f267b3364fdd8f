"""The process-wide inference engine: load once, warm up, then transcribe.

The HTTP layer sees only this narrow interface:

- ``state`` / ``ready`` / ``info`` for ``GET /hc``;
- ``transcribe(audio)`` -> :class:`Transcription` (cooperative: the calling greenlet
  waits while the batcher and its native model thread do the work).

Loading happens off the hub (``start()`` runs it in a native thread), so ``/hc``
answers 503 ``loading`` in milliseconds until the model is loaded and warmed.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import gevent
import numpy as np
from gevent.threadpool import ThreadPool

from app.audio.timemap import TimeMap, compact
from app.audio.vad import VadParams, VoiceDetector
from app.errors import TooManyRequests
from app.inference.alignment import Word
from app.inference.batcher import Batcher, Job, Ticket
from app.inference.chunking import SAMPLE_RATE, Chunk, iter_chunks
from app.inference.merge import WindowMerger
from app.inference.options import DEFAULT_OPTIONS, TranscribeOptions, Window
from app.inference.whisper import DecodedChunk, Segment, TokenTimes, Transcription, WhisperRunner, WindowResult
from app.settings import Settings

log = logging.getLogger(__name__)


class EngineState(enum.StrEnum):
    IDLE = "idle"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class SegmentStream(Iterator[Segment]):
    """A request's segments in audio order; ``cancel()`` drops its windows not yet run."""

    def __init__(
        self,
        segments: Iterator[Segment],
        cancel: Callable[[], None],
        audio_seconds: float,
        language_scores: dict[str, float] | None = None,
    ) -> None:
        self._segments = segments
        self.cancel = cancel
        self.audio_seconds = audio_seconds
        #: per language, the summed detection probability of the windows decoded so far
        self.language_scores = language_scores if language_scores is not None else {}

    @property
    def language(self) -> str | None:
        """The request's language: the one with the highest probability summed over its
        windows (each window is decoded in its own detected language); final once every
        segment has been read."""
        scores = self.language_scores
        return max(scores, key=scores.__getitem__) if scores else None

    def __next__(self) -> Segment:
        return next(self._segments)

    def close(self) -> None:
        self._segments.close()  # type: ignore[attr-defined]

    def collect(self) -> Transcription:
        """Wait for every segment; the whole transcript."""
        segments = list(self)
        return Transcription(
            text="".join(s.text for s in segments).strip(),
            segments=segments,
            audio_seconds=self.audio_seconds,
            language=self.language,
        )


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = EngineState.IDLE
        self.error: str | None = None
        self.runner: WhisperRunner | None = None
        self.batcher: Batcher | None = None
        self.load_seconds: float | None = None
        self._info: dict[str, Any] = {"model_id": settings.model_id, "device": "unknown", "device_name": "unknown"}
        self._loader: gevent.Greenlet | None = None
        self.vad = VoiceDetector()  # loaded on the model thread by the first request that asks for it
        self._model_thread: ThreadPool | None = None

    # ---- lifecycle -----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def start(self) -> gevent.Greenlet:
        """Begin loading in the background; returns the greenlet that finishes when ready."""
        if self._loader is None:
            self._loader = gevent.spawn(self._load_and_warm)
        return self._loader

    def wait_ready(self, timeout: float | None = None) -> bool:
        self.start().join(timeout)
        return self.ready

    def _load_and_warm(self) -> None:
        from app.inference.model_loader import load_model

        self.state = EngineState.LOADING
        started = time.monotonic()
        # Every torch call of this process runs on this one native thread: loading and
        # conversion (CPU/IO heavy, kept off the hub), the runner's set-up, every batch. On
        # CPU, each thread that runs torch ops gets an OpenMP team of its own; two teams
        # oversubscribe the cores, libgomp then stops spin-waiting, and the many small ops
        # of the decoding loop got ~30% slower (bench/RESULTS.md).
        model_thread = self._model_thread = ThreadPool(1)

        def build() -> WhisperRunner:
            return WhisperRunner(
                load_model(self.settings),
                max_new_tokens=self.settings.max_new_tokens,
                decoder=self.settings.decoder,
                int8_projection=self.settings.int8_output_projection,
            )

        try:
            self.runner = model_thread.apply(build)
            loaded = self.runner.loaded
            self.batcher = Batcher(
                self._run_batch,
                max_batch_size=self.settings.batch_size,
                max_wait_s=self.settings.batch_wait_ms / 1000,
                pool=model_thread,
            )
            self._info = {
                "model_id": self.settings.model_id,
                "device": loaded.device.type,
                "device_name": loaded.device_name,
                "dtype": str(loaded.dtype).removeprefix("torch."),
                "attention": loaded.attn_implementation,
                "decoder": self.runner.decoder_name,
                "multilingual": self.runner.multilingual,
            }
            # Warm-up: one real batch through features + generate (allocations, kernels).
            self.batcher.run_sync(self.windows_for(np.zeros(SAMPLE_RATE, dtype=np.float32)))
            self.batcher.start()
        except Exception as exc:
            model_thread.kill()
            self.state = EngineState.FAILED
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("model %s failed to load; /hc stays 503", self.settings.model_id)
            return
        self.load_seconds = time.monotonic() - started
        self.state = EngineState.READY
        log.info("model %s ready on %s in %.1fs", self.settings.model_id, self._info["device_name"], self.load_seconds)

    @property
    def model_busy(self) -> bool:
        """True while the model thread still runs a batch (or the load)."""
        return self._model_thread is not None and self._model_thread.task_queue.unfinished_tasks > 0

    def stop(self) -> None:
        """Stop the batcher greenlet, the loader (if still loading) and the model thread.

        gunicorn's worker_exit hook calls this (app/drain.py ``finish_worker``) when the model
        thread is idle: gevent's ``ThreadPool.kill()`` waits for a batch still running.
        """
        if self._loader is not None and not self._loader.dead:
            self._loader.kill(block=False)
        if self.batcher is not None:
            self.batcher.stop()
        if self._model_thread is not None:
            self._model_thread.kill()

    # ---- work ----------------------------------------------------------------------
    def _run_batch(self, windows: Sequence[Window]) -> list[tuple[WindowResult, TokenTimes | None]]:
        """Per window: its tokens and language, and its tokens' times when it asked for word timestamps."""
        assert self.runner is not None
        audios = [w.chunk.audio for w in windows]
        options = [w.options for w in windows]
        results = self.runner.decode_windows(
            audios, [w.chunk.length_s - w.chunk.stride_right_s for w in windows], options=options
        )
        return list(zip(results, self.runner.token_times(audios, results, options), strict=True))

    @property
    def languages(self) -> frozenset[str]:
        """Language codes the loaded model takes (``{"en"}`` for English-only models)."""
        assert self.runner is not None
        return self.runner.languages

    def chunks_for(self, audio: np.ndarray) -> list[Chunk]:
        return list(iter_chunks(audio, self.settings.chunk_length_s, self.settings.effective_stride_s))

    def windows_for(self, audio: np.ndarray, options: TranscribeOptions = DEFAULT_OPTIONS) -> list[Window]:
        return [Window(chunk, options) for chunk in self.chunks_for(audio)]

    def stream(
        self, audio: np.ndarray, *, progressive: bool = False, options: TranscribeOptions = DEFAULT_OPTIONS
    ) -> SegmentStream:
        """Queue the audio's windows now; return an iterator of its segments in order.

        Admission is decided here, before anything is sent to the client: a full queue
        raises :class:`~app.errors.TooManyRequests` (429 with Retry-After) at once.
        As each window's result arrives it is merged, and every segment that no later
        window can change is yielded. Closing the iterator early, or its ``cancel()`` (a
        client that hung up), cancels the windows not yet run. ``progressive`` puts the first window in a
        batch of its own (then 2, 4, ...) so the first segment comes back quickly.

        ``options.vad``: voice activity detection runs first (on the model thread, this greenlet
        waits); only the speech regions, joined, are cut into windows, and every segment's times
        are mapped back to the original audio (:class:`~app.audio.timemap.TimeMap`).
        """
        if not self.ready or self.batcher is None or self.runner is None:
            raise RuntimeError("engine is not ready")
        seconds = audio.shape[0] / SAMPLE_RATE
        timemap: TimeMap | None = None
        if options.vad:
            self._admit(1)  # a full queue refuses at once, before any VAD work
            audio, timemap = self._speech_only(audio, options.vad_params)
        windows = self.windows_for(audio, options)
        self._admit(len(windows))
        ticket = Ticket(ramp=progressive)
        jobs = self.batcher.submit(ticket, windows)
        scores: dict[str, float] = {}
        segments = self._segments(ticket, jobs, audio.shape[0] / SAMPLE_RATE, scores)
        if timemap is not None:
            segments = _mapped(segments, timemap)
        return SegmentStream(segments, partial(self.batcher.cancel, ticket), seconds, scores)

    def _speech_only(self, audio: np.ndarray, params: VadParams | None) -> tuple[np.ndarray, TimeMap]:
        """The speech regions of ``audio`` joined together, and the map back to original times."""
        assert self.batcher is not None
        params = params or VadParams.from_settings(self.settings)
        regions = self.vad.speech_regions(audio, params, run=self.batcher.call)
        # boundaries the model puts in the padding between two pieces go to the speech side
        # (plus a 20 ms timestamp step of slack)
        return compact(audio, regions, snap_s=params.pad_s + 0.02)

    def _admit(self, windows: int) -> None:
        assert self.batcher is not None
        pending = self.batcher.queue.pending
        limit = self.settings.max_queued_windows
        # A request bigger than the whole queue may still run alone, when nothing waits.
        if pending and pending + windows > limit:
            raise TooManyRequests(
                f"The server is busy ({pending} audio windows queued, limit {limit}); retry later.",
                retry_after=math.ceil(self.batcher.estimated_wait_s(pending + windows)),
            )

    def _segments(
        self, ticket: Ticket, jobs: list[Job], audio_seconds: float, language_scores: dict[str, float]
    ) -> Iterator[Segment]:
        assert self.batcher is not None and self.runner is not None
        runner = self.runner
        merger = WindowMerger()
        emitted = 0
        try:
            for i, job in enumerate(jobs):
                chunk = job.payload.chunk
                result, times = job.result.get()
                if result.language is not None:
                    language_scores[result.language] = (
                        language_scores.get(result.language, 0.0) + result.language_probability
                    )
                merger.add(chunk, runner.parse(DecodedChunk(chunk, result.tokens, times)))
                next_start = jobs[i + 1].payload.chunk.start_s if i + 1 < len(jobs) else None
                stable = merger.stable_count(next_start)
                for raw in merger.merged[emitted:stable]:
                    segment = runner.to_segment(
                        raw, audio_seconds, language=result.language or job.payload.options.language
                    )
                    if segment is not None:
                        yield segment
                emitted = max(emitted, stable)
        finally:
            self.batcher.cancel(ticket)  # frees queued windows of a request that stopped early

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions = DEFAULT_OPTIONS) -> Transcription:
        """Transcribe 16 kHz mono float32 audio; blocks only the calling greenlet."""
        return self.stream(audio, options=options).collect()


def _mapped_word(word: Word, timemap: TimeMap, seg_start: float, seg_end: float) -> Word:
    """A word's times in the original audio, inside its (mapped) segment."""
    start = min(max(round(timemap.to_original(word.start), 3), seg_start), seg_end)
    end = min(max(round(timemap.to_original(word.end, end=True), 3), start), seg_end)
    return replace(word, start=start, end=end)


def _mapped(segments: Iterator[Segment], timemap: TimeMap) -> Iterator[Segment]:
    """``segments`` of the speech-only audio, with their times in the original audio."""
    try:
        for segment in segments:
            start = round(timemap.to_original(segment.start), 3)
            end = round(max(timemap.to_original(segment.end, end=True), start), 3)
            words = segment.words
            if words is not None:
                words = tuple(_mapped_word(w, timemap, start, end) for w in words)
            yield replace(segment, start=start, end=end, words=words)
    finally:
        segments.close()  # type: ignore[attr-defined]
