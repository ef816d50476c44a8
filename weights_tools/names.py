"""Every tensor of a Hugging Face Whisper checkpoint, with its shape, from the dims.

Names drop the `model.` prefix of WhisperForConditionalGeneration checkpoints.
`check_tensors` is the converter's gate: no missing, no extra, every shape right.
"""
from __future__ import annotations

from kernels.errors import AmanuensisError
from weights_tools.dims import ModelDimensions


def _linear(prefix: str, n_out: int, n_in: int, bias: bool = True) -> dict:
    shapes = {f"{prefix}.weight": (n_out, n_in)}
    if bias:
        shapes[f"{prefix}.bias"] = (n_out,)
    return shapes


def _norm(prefix: str, n: int) -> dict:
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,)}


def _attention(prefix: str, d: int) -> dict:
    return {**_linear(f"{prefix}.q_proj", d, d), **_linear(f"{prefix}.k_proj", d, d, bias=False),
            **_linear(f"{prefix}.v_proj", d, d), **_linear(f"{prefix}.out_proj", d, d)}


def _block(p: str, d: int, f: int, cross: bool) -> dict:
    """One transformer block: self-attention, cross-attention (decoder only), feed-forward."""
    shapes = {**_norm(f"{p}.self_attn_layer_norm", d), **_attention(f"{p}.self_attn", d)}
    if cross:
        shapes.update({**_norm(f"{p}.encoder_attn_layer_norm", d), **_attention(f"{p}.encoder_attn", d)})
    return {**shapes, **_norm(f"{p}.final_layer_norm", d), **_linear(f"{p}.fc1", f, d), **_linear(f"{p}.fc2", d, f)}


def encoder_shapes(dims: ModelDimensions) -> dict[str, tuple]:
    """HF names and shapes of the encoder (conv stem, blocks, ln_post)."""
    d, f = dims.n_audio_state, dims.n_audio_mlp
    shapes = {
        "encoder.conv1.weight": (d, dims.n_mels, 3), "encoder.conv1.bias": (d,),
        "encoder.conv2.weight": (d, d, 3), "encoder.conv2.bias": (d,),
        "encoder.embed_positions.weight": (dims.n_audio_ctx, d),
        **_norm("encoder.layer_norm", d),
    }
    for i in range(dims.n_audio_layer):
        shapes.update(_block(f"encoder.layers.{i}", d, f, cross=False))
    return shapes


def decoder_shapes(dims: ModelDimensions) -> dict[str, tuple]:
    """HF names and shapes of the decoder (embeddings, blocks with cross-attention, final norm)."""
    d, f = dims.n_text_state, dims.n_text_mlp
    shapes = {
        "decoder.embed_tokens.weight": (dims.n_vocab, d),
        "decoder.embed_positions.weight": (dims.n_text_ctx, d),
        **_norm("decoder.layer_norm", d),
    }
    for i in range(dims.n_text_layer):
        shapes.update(_block(f"decoder.layers.{i}", d, f, cross=True))
    return shapes


def check_tensors(tensors: dict, expected: dict[str, tuple], source: str) -> None:
    """Raise AmanuensisError naming every missing, extra or mis-shaped tensor."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: {tuple(tensors[k].shape)} where the config implies {expected[k]}"
             for k in sorted(set(expected) & set(tensors)) if tuple(tensors[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if extra:
        problems.append(f"unexpected tensor(s): {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else ""))
    if wrong:
        problems.append("wrong shape: " + "; ".join(wrong[:8]) + (" ..." if len(wrong) > 8 else ""))
    if problems:
        raise AmanuensisError(f"{source}: " + "; ".join(problems))
