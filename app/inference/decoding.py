"""A lean greedy decoding loop for Whisper, with OpenAI's timestamp rules as tensor ops.

transformers' ``generate`` spends most of its time on CPU in per-step bookkeeping
(logits-processor objects, dynamic caches, stopping criteria), not arithmetic. This loop
runs the same :class:`~transformers.WhisperForConditionalGeneration` weights with:

- the encoder once per batch and each layer's cross-attention keys/values computed once;
- a preallocated (static) self-attention KV cache;
- fused q/k/v projections for the self-attention;
- the suppression and timestamp rules of OpenAI's decoder (the ones transformers'
  ``WhisperTimeStampLogitsProcessor`` copies) applied to the whole batch with masks.

It is greedy (temperature 0, like the reference server's defaults; sampling at a
temperature, for all windows or per window, is there for :mod:`app.inference.fallback`
and for requests that ask for it) and returns, for each window, the generated token ids
with timestamp tokens, the same shape ``generate`` gives. Each window may have its own
decoder prompt (language, task, OpenAI's ``prompt`` text) as long as all prompts in one
batch have the same length; :meth:`GreedyDecoder.language_probs` detects a window's
language in one decoder step on the encoder output the decoding then reuses.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingRules:
    eot: int
    timestamp_begin: int
    no_timestamps: int
    suppress: tuple[int, ...]
    begin_suppress: tuple[int, ...]
    max_initial_timestamp_index: int | None

    @classmethod
    def from_generation_config(cls, gen) -> DecodingRules:
        return cls(
            eot=int(gen.eos_token_id),
            timestamp_begin=int(gen.no_timestamps_token_id) + 1,
            no_timestamps=int(gen.no_timestamps_token_id),
            suppress=tuple(gen.suppress_tokens or ()),
            begin_suppress=tuple(gen.begin_suppress_tokens or ()),
            max_initial_timestamp_index=getattr(gen, "max_initial_timestamp_index", None),
        )


class GreedyDecoder:
    def __init__(self, model, rules: DecodingRules, *, int8_projection: bool = False) -> None:
        """``int8_projection``: run the output projection (the largest matrix by far, read
        once per step) as a per-channel int8 matmul (fbgemm/onednn, CPU only)."""
        self.model = model
        self.rules = rules
        decoder = model.model.decoder
        self.layers = decoder.layers
        self.embed_tokens = decoder.embed_tokens
        self.embed_positions = decoder.embed_positions.weight
        self.final_norm = decoder.layer_norm
        self.max_positions = self.embed_positions.shape[0]
        self.heads = self.layers[0].self_attn.num_heads
        # fused self-attention projection: one matmul instead of three (k has no bias)
        self._qkv = []
        for layer in self.layers:
            attn = layer.self_attn
            weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            bias = torch.cat([attn.q_proj.bias, torch.zeros_like(attn.q_proj.bias), attn.v_proj.bias])
            self._qkv.append((weight, bias))
        vocab = self.embed_tokens.weight.shape[0]
        device = self.embed_tokens.weight.device
        self._first_mask = torch.ones(vocab, dtype=torch.bool, device=device)
        last_initial = (
            vocab
            if rules.max_initial_timestamp_index is None
            else rules.timestamp_begin + rules.max_initial_timestamp_index + 1
        )
        self._first_mask[rules.timestamp_begin : last_initial] = False  # must start with an early timestamp
        self._stamp_ids = torch.arange(vocab - rules.timestamp_begin, device=device)
        # the static suppression as the output projection's bias: free inside the matmul
        proj = model.proj_out.weight
        self._proj_bias = torch.zeros(vocab, dtype=proj.dtype, device=device)
        self._proj_bias[[*rules.suppress, rules.no_timestamps]] = NEG_INF
        self._project = self._projection(proj, int8_projection)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, -1).transpose(1, 2)

    @torch.inference_mode()
    def encode(self, input_features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The encoder once, then each decoder layer's cross-attention keys and values."""
        encoder_out = self.model.model.encoder(input_features).last_hidden_state
        cross = []
        for layer in self.layers:
            attn = layer.encoder_attn
            # keys pre-transposed and pre-scaled: cross-attention is then two plain batched matmuls
            scale = attn.head_dim**-0.5
            keys_t = (self._split_heads(attn.k_proj(encoder_out)) * scale).transpose(-1, -2).contiguous()
            cross.append((keys_t, self._split_heads(attn.v_proj(encoder_out)).contiguous()))
        return cross

    def _caches(self, cross, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        values = cross[0][1]
        shape = (values.shape[0], self.heads, length, values.shape[-1])
        return [tuple(torch.empty(shape, device=values.device, dtype=values.dtype) for _ in range(2)) for _ in cross]

    @torch.inference_mode()
    def language_probs(self, cross, start_token: int, language_ids: torch.Tensor) -> torch.Tensor:
        """Per window, the probability of each of ``language_ids`` as the token after
        ``<|startoftranscript|>`` (OpenAI's ``detect_language``): one decoder step on the
        encoder output already computed, shape (windows, languages)."""
        batch = cross[0][0].shape[0]
        tokens = torch.full((batch, 1), start_token, dtype=torch.long, device=language_ids.device)
        logits = self._step(tokens, 0, cross, self._caches(cross, 1))
        return logits[:, language_ids].float().softmax(dim=-1)

    @torch.inference_mode()
    def decode(
        self,
        cross,
        prompts: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float | torch.Tensor = 0.0,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """Generated tokens per window after ``prompts`` (windows, prompt length) on :meth:`encode`'s output."""
        rules = self.rules
        batch, prompt_length = prompts.shape
        device = prompts.device
        total = min(prompt_length + max_new_tokens, self.max_positions)
        caches = self._caches(cross, total)
        if isinstance(temperature, torch.Tensor) and not bool((temperature > 0).any()):
            temperature = 0.0  # all greedy: the plain argmax path

        logits = self._step(prompts, 0, cross, caches)
        pos = prompt_length
        results: list[list[int]] = [[] for _ in range(batch)]
        rows = list(range(batch))  # which window each still-active row belongs to
        last_ts = torch.ones(batch, dtype=torch.bool, device=device)  # "fewer than two tokens" counts as pairs
        penult_ts = torch.ones(batch, dtype=torch.bool, device=device)
        max_ts = torch.full((batch,), -1, dtype=torch.long, device=device)
        for step in range(total - prompt_length):
            next_tokens = self._pick(logits, step, last_ts, penult_ts, max_ts, temperature, generator)
            picked = next_tokens.tolist()
            done = [tok == rules.eot for tok in picked]
            for row, tok, stop in zip(rows, picked, done, strict=True):
                if not stop:
                    results[row].append(tok)
            if pos >= total or all(done):
                break
            if any(done):
                # drop finished windows from the batch: no more compute is spent on them
                keep = torch.tensor([not d for d in done], device=device)
                rows = [r for r, d in zip(rows, done, strict=True) if not d]
                next_tokens, last_ts, max_ts = next_tokens[keep], last_ts[keep], max_ts[keep]
                if isinstance(temperature, torch.Tensor):
                    temperature = temperature[keep]
                cross = [(k[keep], v[keep]) for k, v in cross]
                caches = [(k[keep], v[keep]) for k, v in caches]
            is_ts = next_tokens >= rules.timestamp_begin
            penult_ts, last_ts = last_ts, is_ts
            max_ts = torch.where(is_ts, next_tokens, max_ts)
            logits = self._step(next_tokens.unsqueeze(1), pos, cross, caches)
            pos += 1
        return results

    @torch.inference_mode()
    def alignment_scores(
        self, input_features: torch.Tensor, sequences: list[list[int]], heads: list[tuple[int, int]]
    ) -> list[torch.Tensor]:
        """Teacher-forced cross-attention scores of the alignment ``heads`` ([layer, head]).

        One decoder pass over each window's whole ``sequences`` row (rows are padded at the
        end: the causal self-attention keeps padding from touching earlier positions).
        Returns, per window, a float32 (heads, len(row), frames) tensor of scaled logits
        before softmax (see :mod:`app.inference.alignment`).
        """
        cross = self.encode(input_features)
        device = cross[0][0].device
        length = max(len(row) for row in sequences)
        caches = self._caches(cross, length)
        pad = self.rules.eot
        tokens = torch.tensor([row + [pad] * (length - len(row)) for row in sequences], device=device)
        captured: list[torch.Tensor] = []
        self._step(tokens, 0, cross, caches, capture=captured)
        picked = torch.stack([captured[layer][:, head] for layer, head in heads], dim=1).float()
        return [picked[i, :, : len(row)] for i, row in enumerate(sequences)]

    def _pick(
        self,
        logits: torch.Tensor,
        step: int,
        last_ts: torch.Tensor,
        penult_ts: torch.Tensor,
        max_ts: torch.Tensor,
        temperature: float | torch.Tensor = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Greedy choice under Whisper's suppression and timestamp rules, for every row at once.

        The static suppression is already in ``logits`` (the projection's bias). The rules
        touch only the timestamp slice (~1.5k columns) or whole rows, never build masks over
        the full vocabulary, and "timestamps together likelier than the best text token" is
        compared on raw scores: log_softmax subtracts the same normalizer from both sides.
        """
        rules = self.rules
        begin = rules.timestamp_begin
        scores = logits if logits.dtype == torch.float32 else logits.float()
        text, stamps = scores[:, :begin], scores[:, begin:]
        if step == 0:
            scores[:, list(rules.begin_suppress)] = NEG_INF
            scores.masked_fill_(self._first_mask, NEG_INF)
        else:
            # timestamps come in pairs, except right before <|endoftext|>
            stamps[last_ts & penult_ts] = NEG_INF
            text[last_ts & ~penult_ts, : rules.eot] = NEG_INF
            # timestamps never decrease (and a start repeats the previous end at most)
            floor = torch.where(last_ts & ~penult_ts, max_ts, max_ts + 1) - begin
            floor = torch.where(max_ts >= 0, floor, 0)
            stamps.masked_fill_(self._stamp_ids < floor.unsqueeze(1), NEG_INF)
        best_text, text_id = text.max(dim=-1)
        # when all timestamps together are likelier than any one text token, emit a timestamp
        # (this also covers the best timestamp beating the best text token)
        forced = stamps.logsumexp(dim=-1) > best_text
        greedy = torch.where(forced, stamps.argmax(dim=-1) + begin, text_id)
        per_row = isinstance(temperature, torch.Tensor)
        if not per_row and temperature <= 0:
            return greedy
        text[forced] = NEG_INF
        scale = temperature.clamp(min=1e-6).unsqueeze(1) if per_row else temperature
        probs = F.softmax(scores / scale, dim=-1)
        sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        # rows at temperature 0 keep their argmax
        return torch.where(temperature > 0, sampled, greedy) if per_row else sampled

    def _step(self, tokens: torch.Tensor, pos: int, cross, caches, capture: list | None = None) -> torch.Tensor:
        """Run the decoder on ``tokens`` at positions ``pos...``; logits of the last position.

        ``capture``: a list that gets each layer's cross-attention scores (before softmax).
        """
        length = tokens.shape[1]
        h = self.embed_tokens(tokens) + self.embed_positions[pos : pos + length]
        end = pos + length
        for layer, (weight, bias), (ck, cv), (k_cache, v_cache) in zip(
            self.layers, self._qkv, cross, caches, strict=True
        ):
            residual = h
            x = layer.self_attn_layer_norm(h)
            q, k, v = F.linear(x, weight, bias).chunk(3, dim=-1)
            k_cache[:, :, pos:end] = self._split_heads(k)
            v_cache[:, :, pos:end] = self._split_heads(v)
            attn = F.scaled_dot_product_attention(
                self._split_heads(q), k_cache[:, :, :end], v_cache[:, :, :end], is_causal=length > 1 and pos == 0
            )
            h = residual + layer.self_attn.out_proj(attn.transpose(1, 2).reshape(h.shape))

            residual = h
            x = layer.encoder_attn_layer_norm(h)
            q = self._split_heads(layer.encoder_attn.q_proj(x))
            scores = torch.matmul(q, ck)
            if capture is not None:
                capture.append(scores)
            attn = torch.matmul(scores.softmax(dim=-1), cv)
            h = residual + layer.encoder_attn.out_proj(attn.transpose(1, 2).reshape(h.shape))

            residual = h
            x = layer.final_layer_norm(h)
            h = residual + layer.fc2(layer.activation_fn(layer.fc1(x)))
        h = self.final_norm(h[:, -1])
        return self._project(h)

    def _projection(self, weight: torch.Tensor, int8: bool):
        """``h -> logits`` (suppression bias included), in fp32/fp16 or as an int8 matmul."""
        packed = None
        if int8:
            try:
                packed = _pack_int8_rows(weight)
            except (RuntimeError, AttributeError) as exc:
                log.warning("int8 output projection unavailable (%s); using float", exc)
        if packed is None:
            return lambda h: F.linear(h, weight, self._proj_bias)
        bias = self._proj_bias.float()

        def project(h: torch.Tensor) -> torch.Tensor:
            # quantized.linear_dynamic quantizes its input with ONE scale for the whole batch
            # (min/max of the tensor), which would make a window's tokens depend on the other
            # windows in its batch. Scale each row to max |x| = 1 and append the columns +1
            # and -1 (zero weights): every batch then has min -1 and max +1, each row is
            # quantized the same way whatever shares its batch, and gets the full int8 range.
            h = h.float()  # fbgemm takes float32 (the model may run in bfloat16); logits stay float32
            scale = h.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
            ones = torch.ones(h.shape[0], 1, device=h.device)
            x = torch.cat([h / scale, ones, -ones], dim=1)
            return torch.ops.quantized.linear_dynamic(x, packed) * scale + bias

        return project


def _pack_int8_rows(weight: torch.Tensor):
    """``weight`` (out, in) as fbgemm's packed per-channel qint8, with two extra zero input columns."""
    w = weight.detach().float()
    w = torch.cat([w, torch.zeros(w.shape[0], 2)], dim=1)
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-8)
    zero_points = torch.zeros(w.shape[0], dtype=torch.long)
    # torch's quantized-tensor API warns that it is deprecated (pytorch#184982); it is still
    # the fast int8 GEMM on CPU (fbgemm: ~5x over fp32 here, where torch._weight_int8pack_mm
    # is ~4x slower than fp32). Without it: fp32.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(quantized, None)
