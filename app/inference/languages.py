"""Whisper's language codes and names (OpenAI's table, as transformers' tokenizer ships it).

Clients may name a language by its code (``de``) or its English name (``german``, any
case), as OpenAI's API and ``whisper`` CLI accept; replies name it by code on ``/asr`` and
by lower-case English name in ``verbose_json`` (OpenAI's shape).
"""

from __future__ import annotations


def _tables() -> tuple[dict[str, str], dict[str, str]]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    return LANGUAGES, TO_LANGUAGE_CODE


def language_code(value: str) -> str | None:
    """``de``, ``German``, ``german`` -> ``de``; ``None`` when Whisper has no such language."""
    names, codes = _tables()
    key = value.strip().lower()
    if key in names:
        return key
    return codes.get(key)


def language_name(code: str) -> str:
    """``de`` -> ``german`` (the code itself when unknown)."""
    return _tables()[0].get(code, code)
