"""The decoder graph's inputs and outputs, by name: one definition for the graph builder
(weights_tools.onnx_decoder) and the session that runs it (decoder.session).

Inputs
    input_ids           int64 (B, S)         the new tokens
    offset              int64 ()             how many tokens the cache already holds
    pad                 int64 (B,)           how many of a row's first slots are padding (rows
                        with shorter prompts are right-aligned): masked, and positions start after them
    logits_from         int64 ()             first position whose logits are wanted (a prefill of
                        a long prompt needs only its last few rows: the vocabulary projection is
                        the decoder's largest matmul, and its output the largest tensor)
    past_key_i/value_i  float (B, H, C, d_head)  self-attention cache of C <= n_text_ctx slots (the
                        host grows C as tokens come), slots >= offset ignored
    cross_key_i/value_i float (W, H, n_audio_ctx, d_head)  from the encoder output of W windows,
                        computed once per window by the encoder's kernels (not in this graph); W
                        divides B, and rows w·B/W .. (w+1)·B/W - 1 belong to window w (its beams
                        or samples)
Outputs
    logits              float (B, S - logits_from, n_vocab)
    new_key_i/value_i   float (B, H, S, d_head)  the host writes them into the cache at `offset`,
                        so the cache is never copied whole
    alignment           float (B, n_align, S, n_audio_ctx)  cross-attention of the alignment heads
                        (only when the model names alignment heads)
"""
from __future__ import annotations

INPUT_IDS = "input_ids"
OFFSET = "offset"
PAD = "pad"
LOGITS_FROM = "logits_from"
LOGITS = "logits"
ALIGNMENT = "alignment"


def past_key(layer: int) -> str:
    return f"past_key_{layer}"


def past_value(layer: int) -> str:
    return f"past_value_{layer}"


def cross_key(layer: int) -> str:
    return f"cross_key_{layer}"


def cross_value(layer: int) -> str:
    return f"cross_value_{layer}"


def new_key(layer: int) -> str:
    return f"new_key_{layer}"


def new_value(layer: int) -> str:
    return f"new_value_{layer}"
