"""One typed settings object, read once from the environment.

Names and defaults follow the reference server where it has them (``HOST``, ``PORT``,
``MODEL_ID``, ``CACHE_DIR``, ``FLASH_ATTENTION_2``, ``BATCH_SIZE``, ``MAX_NEW_TOKENS``,
``CHUNK_LENGTH_S``, ``STRIDE_LENGTH_S``). Tests build ``Settings(...)`` directly;
nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EMBEDDED_TINY_EN = "embedded/whisper-tiny.en"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", frozen=True, env_ignore_empty=True
    )

    # --- server -------------------------------------------------------------------
    host: str = Field("*", description="Interface to listen on; `*` means all interfaces.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    gevent_connections: int = Field(
        1000, ge=1, description="Concurrent connections one gevent worker accepts (gunicorn worker_connections)."
    )
    api_key: SecretStr | None = Field(
        None,
        description=(
            "When set, every route except `/hc` (and the open ones below) requires `Authorization: Bearer <key>`; "
            "unset: no auth. Printable ASCII without spaces."
        ),
    )
    public_docs: bool = Field(
        True, description="With `API_KEY`: `/docs`, its assets and `/openapi.json` stay open (no key needed)."
    )
    public_metrics: bool = Field(False, description="With `API_KEY`: `/metrics` stays open (no key needed).")
    log_format: Literal["json", "text"] = Field(
        "json",
        description=(
            "gunicorn's and the app's log lines: `json` (one object per line: time, level, logger, process, "
            "message, and `request_id` for lines about a request) or `text`."
        ),
    )

    # --- model --------------------------------------------------------------------
    model_id: str = Field(
        EMBEDDED_TINY_EN,
        description=(
            "Whisper checkpoint: `embedded/whisper-tiny.en` (English-only) or `embedded/whisper-base` "
            "(multilingual; both ship with the install, work offline), "
            "a hub id such as `openai/whisper-large-v3`, a transformers checkpoint directory, "
            "or a CTranslate2 Whisper directory."
        ),
    )
    cache_dir: Path = Field(Path("/data"), description="Where hub downloads and converted checkpoints are cached.")
    flash_attention_2: bool = Field(False, description="Use FlashAttention-2 on CUDA when installed (Dockerfile.fa2).")
    device: str = Field("auto", description="`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description=(
            "`auto`: float16 on CUDA; on CPU bfloat16 where the CPU has AMX (about 1.5x faster round trip, same "
            "WER), else float32."
        ),
    )
    decoder: Literal["lean", "generate"] = Field(
        "lean",
        description=(
            "`lean`: this server's greedy loop (static KV cache, cross-attention keys computed once, timestamp "
            "rules as tensor ops, language detection in the same pass); `generate`: transformers' generate() "
            "(the reference path; it detects languages with a second encoder pass)."
        ),
    )
    cpu_threads: int = Field(0, ge=0, description="torch intra-op threads on CPU; 0 = torch's default (all cores).")
    int8_output_projection: bool = Field(
        True,
        description=(
            "On CPU, the lean decoder runs its vocabulary projection (the largest matrix, read once per "
            "token step) as a per-channel int8 matmul: the decoding path ~10% faster (3.34 s -> 3.01 s) at "
            "unchanged WER on the benchmark (bench/RESULTS.md). No effect on GPU or with DECODER=generate."
        ),
    )

    # --- chunked pipeline ---------------------------------------------------------
    batch_size: int = Field(16, ge=1, le=256, description="Chunks per model batch.")
    max_new_tokens: int = Field(128, ge=1, le=440, description="Most tokens decoded per 30 s chunk.")
    chunk_length_s: float = Field(30.0, gt=0, le=30, description="Window length in seconds (Whisper sees 30 s).")
    stride_length_s: float | None = Field(
        None, ge=0, description="Overlap on each side of a window; default CHUNK_LENGTH_S / 6."
    )
    batch_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="How long the batcher waits for more chunks before running a partial batch."
    )

    max_queued_windows: int = Field(
        256,
        ge=1,
        description=(
            "Backpressure: most 30 s windows waiting for the model. A request that would go past it gets 429 "
            "with Retry-After at once instead of waiting (a single request may exceed it when nothing is queued)."
        ),
    )

    # --- audio intake -------------------------------------------------------------
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1, description="Largest request body or download, bytes.")
    max_audio_seconds: float = Field(4 * 3600, gt=0, description="Longest audio accepted, seconds.")
    local_audio_dir: Path | None = Field(
        None, description='Directory that `{"url": "/path"}` may read from; unset = local paths refused.'
    )
    url_connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout for audio URLs.")
    url_read_timeout_s: float = Field(30.0, gt=0, description="Read timeout (between bytes) for audio URLs.")
    url_max_redirects: int = Field(5, ge=0, le=20, description="Most redirects followed for an audio URL.")
    url_allowed_networks: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "CIDRs that audio URLs may reach although private/loopback (comma-separated in the env), "
            "e.g. `10.0.0.0/8`. Empty: only public addresses."
        ),
    )
    upload_timeout_s: float = Field(
        300.0, gt=0, description="Longest time a client may take to send its request body (408 after)."
    )
    fetch_timeout_s: float = Field(300.0, gt=0, description="Longest total time to download an audio URL (504 after).")
    decode_timeout_s: float = Field(300.0, gt=0, description="Longest time ffmpeg may take to decode one input.")

    # --- voice activity detection -------------------------------------------------
    vad_filter: bool = Field(
        False,
        description=(
            "Default for requests that do not choose (`/asr?vad=`, `/v1` `chunking_strategy` or `vad`): cut "
            "long silences out with Silero VAD before decoding, so they produce no invented text; "
            "timestamps still refer to the original audio."
        ),
    )
    vad_threshold: float = Field(
        0.5, gt=0, lt=1, description="VAD: speech probability above which a 32 ms frame counts as speech."
    )
    vad_min_silence_s: float = Field(
        2.0, gt=0, le=60, description="VAD: silences at least this long are cut out; shorter pauses are kept."
    )
    vad_speech_pad_s: float = Field(
        0.4, ge=0, le=5, description="VAD: audio kept before and after each speech region, seconds."
    )

    # --- shutdown (SIGTERM drain, app/drain.py) ----------------------------------
    graceful_timeout_s: float = Field(
        60.0,
        gt=0,
        description=(
            "gunicorn graceful_timeout: after SIGTERM the master kills a worker still running after this many "
            "seconds. Give the orchestrator a little more (Kubernetes terminationGracePeriodSeconds)."
        ),
    )
    drain_prestop_s: float = Field(
        0.0,
        ge=0,
        description=(
            "After SIGTERM, seconds during which /hc already answers 503 `draining` (and new work 503) while "
            "the listening socket stays open, so load balancers take the instance out before it goes."
        ),
    )
    drain_timeout_s: float = Field(
        50.0,
        gt=0,
        description=(
            "After SIGTERM (and the pre-stop delay), the longest wait for in-flight requests and streams to "
            "finish; the worker then exits. DRAIN_PRESTOP_S + DRAIN_TIMEOUT_S must be below GRACEFUL_TIMEOUT_S."
        ),
    )

    @field_validator("local_audio_dir", mode="before")
    @classmethod
    def _blank_dir_is_unset(cls, value: object) -> object:
        # Path("") is ".", the working directory: never let an empty value mean "read cwd".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        # a bearer token is one header word: visible ASCII only (RFC 6750's b64token is stricter)
        if value is not None and not re.fullmatch(r"[!-~]+", value.get_secret_value()):
            raise ValueError("API_KEY must be printable ASCII without spaces")
        return value

    @field_validator("url_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("url_allowed_networks")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value

    @model_validator(mode="after")
    def _check_stride(self) -> Settings:
        if 2 * self.effective_stride_s >= self.chunk_length_s:
            raise ValueError("STRIDE_LENGTH_S must be less than half of CHUNK_LENGTH_S")
        return self

    @model_validator(mode="after")
    def _check_drain(self) -> Settings:
        if self.drain_prestop_s + self.drain_timeout_s >= self.graceful_timeout_s:
            raise ValueError("DRAIN_PRESTOP_S + DRAIN_TIMEOUT_S must be less than GRACEFUL_TIMEOUT_S")
        return self

    @property
    def effective_stride_s(self) -> float:
        return self.chunk_length_s / 6 if self.stride_length_s is None else self.stride_length_s

    @property
    def bind(self) -> str:
        host = "0.0.0.0" if self.host in ("*", "") else self.host  # noqa: S104 - HOST=* means all interfaces
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"
