"""Convert a CTranslate2 Whisper model directory into a transformers checkpoint.

CTranslate2 ships Whisper as ``model.bin`` (binary format version 6, possibly split
into parts), ``config.json`` (suppress ids, language ids, alignment heads) and a
transformers fast-tokenizer file ``tokenizer.json``. Every weight maps one to one
onto :class:`transformers.WhisperForConditionalGeneration`; fused projections are
split back into q/k/v. The result is a normal transformers checkpoint directory
that ``from_pretrained`` loads, so the rest of the server never sees CTranslate2.
"""

from __future__ import annotations

import io
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

CT2_BINARY_VERSION = 6
_CT2_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    # 5 (bfloat16) has no numpy dtype; it is widened below.
}
_BFLOAT16 = 5
_MODEL_BIN_PARTS = re.compile(r"^model\.bin(?:[._-]?part)?[._-]?(\d+)$")


class ConversionError(ValueError):
    """The directory is not a CTranslate2 Whisper model this converter understands."""


@dataclass(frozen=True)
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]


def is_ct2_whisper_dir(path: Path) -> bool:
    """True when ``path`` looks like a CTranslate2 Whisper model directory."""
    return (path / "tokenizer.json").is_file() and ((path / "model.bin").is_file() or bool(model_bin_parts(path)))


def model_bin_parts(path: Path) -> list[Path]:
    """The pieces of a ``model.bin`` split into parts, in order (empty if unsplit)."""
    parts = []
    for child in path.iterdir():
        match = _MODEL_BIN_PARTS.match(child.name)
        if match and child.is_file():
            parts.append((int(match.group(1)), child))
    return [p for _, p in sorted(parts)]


def _read_u16(f: BinaryIO) -> int:
    return struct.unpack("<H", _read_exact(f, 2))[0]


def _read_u32(f: BinaryIO) -> int:
    return struct.unpack("<I", _read_exact(f, 4))[0]


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ConversionError("model.bin is truncated")
    return data


def _read_string(f: BinaryIO) -> str:
    length = _read_u16(f)
    return _read_exact(f, length)[:-1].decode("utf-8")


def read_ct2_model(f: BinaryIO) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` stream (binary version 6)."""
    version = _read_u32(f)
    if version != CT2_BINARY_VERSION:
        raise ConversionError(f"unsupported CTranslate2 binary version {version}")
    spec = _read_string(f)
    revision = _read_u32(f)
    variables: dict[str, np.ndarray] = {}
    for _ in range(_read_u32(f)):
        name = _read_string(f)
        rank = _read_exact(f, 1)[0]
        shape = struct.unpack(f"<{rank}I", _read_exact(f, 4 * rank)) if rank else ()
        dtype_id = _read_exact(f, 1)[0]
        nbytes = _read_u32(f)
        raw = _read_exact(f, nbytes)
        if dtype_id == _BFLOAT16:
            widened = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = widened.view(np.float32)
        elif dtype_id in _CT2_DTYPES:
            array = np.frombuffer(raw, dtype=_CT2_DTYPES[dtype_id])
        else:
            raise ConversionError(f"unsupported dtype {dtype_id} for {name}")
        variables[name] = array.reshape(shape)
    for _ in range(_read_u32(f)):
        alias, target = _read_string(f), _read_string(f)
        variables[alias] = variables[target]
    return CT2Model(spec=spec, revision=revision, variables=variables)


def load_ct2_model(path: Path) -> CT2Model:
    """Read ``model.bin`` from a directory, joining split parts when needed."""
    single = path / "model.bin"
    if single.is_file():
        with single.open("rb") as f:
            return read_ct2_model(f)
    parts = model_bin_parts(path)
    if not parts:
        raise ConversionError(f"no model.bin in {path.name}")
    with io.BufferedReader(_ConcatenatedFiles(parts), buffer_size=1 << 20) as f:
        return read_ct2_model(f)


class _ConcatenatedFiles(io.RawIOBase):
    """The parts of a split file read in order as one stream (never joined in memory or on disk)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._current: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._current is None:
                if not self._paths:
                    return 0
                self._current = self._paths.pop(0).open("rb")
            n = self._current.readinto(buffer)
            if n:
                return n
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()


def _layer_count(variables: dict[str, np.ndarray], prefix: str) -> int:
    indices = {int(m.group(1)) for name in variables if (m := re.match(rf"^{prefix}/layer_(\d+)/", name))}
    return max(indices) + 1 if indices else 0


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    return int(variables[name].reshape(()))


def ct2_to_state_dict(model: CT2Model) -> tuple[dict[str, np.ndarray], dict]:
    """Map CTranslate2 Whisper variables onto transformers names; return (state, dims)."""
    if model.spec != "WhisperSpec":
        raise ConversionError(f"not a Whisper model (spec {model.spec!r})")
    v = model.variables
    d_model = v["encoder/conv1/weight"].shape[0]
    dims = {
        "vocab_size": v["decoder/embeddings/weight"].shape[0],
        "num_mel_bins": v["encoder/conv1/weight"].shape[1],
        "d_model": d_model,
        "encoder_layers": _layer_count(v, "encoder"),
        "decoder_layers": _layer_count(v, "decoder"),
        "encoder_attention_heads": _scalar(v, "encoder/num_heads"),
        "decoder_attention_heads": _scalar(v, "decoder/num_heads"),
        "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": v["decoder/position_encodings/encodings"].shape[0],
    }
    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/weight"]
        if bias:
            sd[f"{dst}.bias"] = v[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/gamma"]
        sd[f"{dst}.bias"] = v[f"{src}/beta"]

    def split(src: str, parts: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return (
            np.split(v[f"{src}/weight"], parts, axis=0),
            np.split(v[f"{src}/bias"], parts, axis=0),
        )

    def fused_attention(dst: str, src: str, names: tuple[str, ...]) -> None:
        weights, biases = split(src, len(names))
        for name, w, b in zip(names, weights, biases, strict=True):
            sd[f"{dst}.{name}.weight"] = w
            if name != "k_proj":  # Whisper's key projection has no bias (CT2 stores zeros)
                sd[f"{dst}.{name}.bias"] = b

    for side in ("encoder", "decoder"):
        for i in range(dims[f"{side}_layers"]):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused_attention(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused_attention(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    sd["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    sd["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    return sd, dims


@dataclass(frozen=True)
class SpecialTokens:
    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_prev: int
    no_timestamps: int
    languages: dict[str, int]


def _special_tokens(tokenizer_json: dict, lang_ids: list[int] | None = None) -> SpecialTokens:
    """Whisper's special ids; ``lang_ids`` (CTranslate2's config) names the language tokens
    when given, else they are the ``<|xx|>`` tokens between the start and task tokens."""
    added = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}
    try:
        eot = added["<|endoftext|>"]
        sot = added["<|startoftranscript|>"]
        languages = {
            tok: idx
            for tok, idx in added.items()
            if (idx in lang_ids if lang_ids else re.fullmatch(r"<\|[a-z]{2,3}(?:_[a-z]+)?\|>", tok))
            and sot < idx < added["<|translate|>"]
        }
        return SpecialTokens(
            eot=eot,
            sot=sot,
            translate=added["<|translate|>"],
            transcribe=added["<|transcribe|>"],
            sot_prev=added["<|startofprev|>"],
            no_timestamps=added["<|notimestamps|>"],
            languages=languages,
        )
    except KeyError as exc:
        raise ConversionError(f"tokenizer.json lacks Whisper special token {exc}") from exc


def _with_timestamp_tokens(tokenizer_json: dict, specials: SpecialTokens, vocab_size: int) -> dict:
    """Add <|0.00|> ... <|30.00|> as (non-special) added tokens, as the hub checkpoints do."""
    added = tokenizer_json.setdefault("added_tokens", [])
    have = {t["content"] for t in added}
    first = specials.no_timestamps + 1
    for i in range(vocab_size - first):
        content = f"<|{i * 0.02:.2f}|>"
        if content not in have:
            added.append(
                {
                    "id": first + i,
                    "content": content,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": False,
                }
            )
    return tokenizer_json


def convert_ct2_whisper(src: Path, dst: Path) -> None:
    """Write a transformers Whisper checkpoint for the CTranslate2 model in ``src`` to ``dst``.

    ``dst`` is written atomically: files go to a sibling temporary directory that is
    renamed into place at the end, so a crash never leaves a half-written checkpoint.
    """
    import shutil
    import tempfile

    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    model = load_ct2_model(src)
    state, dims = ct2_to_state_dict(model)
    ct2_config = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    tokenizer_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    specials = _special_tokens(tokenizer_json, ct2_config.get("lang_ids"))
    # English-only checkpoints share the token layout minus one id (51864 vs 51865+);
    # this is how OpenAI's own code tells them apart.
    is_multilingual = dims["vocab_size"] >= 51865

    config = WhisperConfig(
        **dims,
        activation_function="gelu",
        pad_token_id=specials.eot,
        bos_token_id=specials.eot,
        eos_token_id=specials.eot,
        decoder_start_token_id=specials.sot,
        tie_word_embeddings=True,
        architectures=["WhisperForConditionalGeneration"],
    )
    multilingual: dict = {}
    if is_multilingual:
        # transformers treats the mere presence of ``lang_to_id`` as "multilingual".
        multilingual = {
            "lang_to_id": specials.languages,
            "task_to_id": {"transcribe": specials.transcribe, "translate": specials.translate},
        }
    generation = GenerationConfig(
        **multilingual,
        decoder_start_token_id=specials.sot,
        bos_token_id=specials.eot,
        eos_token_id=specials.eot,
        pad_token_id=specials.eot,
        max_length=dims["max_target_positions"],
        no_timestamps_token_id=specials.no_timestamps,
        prev_sot_token_id=specials.sot_prev,
        is_multilingual=is_multilingual,
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, specials.eot]),
        alignment_heads=ct2_config.get("alignment_heads", []),
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    tokenizer_json = _with_timestamp_tokens(tokenizer_json, specials, dims["vocab_size"])

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        tensors = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in state.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(tmp)
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "WhisperTokenizer",
                    "model_max_length": 1024,
                    "bos_token": "<|endoftext|>",
                    "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>",
                    "add_prefix_space": False,
                    "errors": "replace",
                    # Order matters: transformers takes the last special id + 1 as <|0.00|>.
                    "extra_special_tokens": [
                        t["content"]
                        for t in sorted(tokenizer_json["added_tokens"], key=lambda t: t["id"])
                        if t.get("special")
                    ],
                }
            )
        )
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
