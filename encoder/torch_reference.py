"""The PyTorch reference: transformers' Whisper holding our converted weights.

The parity checks (encoder/layer_parity.py), the decoder's tests and the bench's transformers peer
compare with it. torch and transformers are test-only dependencies (`pip install 'amanuensis[test]'`).
"""
from __future__ import annotations

import numpy as np

from encoder.network import OUTPUT, block_output
from kernels.errors import AmanuensisError
from weights_tools.layout import kernel_to_encoder


def torch_modules():
    """(torch, transformers), or an AmanuensisError saying how to install them."""
    try:
        import torch
        import transformers
    except ImportError:
        raise AmanuensisError("parity needs torch and transformers: pip install 'amanuensis[test]'") from None
    return torch, transformers


def torch_encoder(converted):
    """transformers' WhisperEncoder holding our converted weights (mapped back to HF layout)."""
    torch, transformers = torch_modules()
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = transformers.WhisperConfig(**{k: v for k, v in converted.config.items() if k != "architectures"})
    encoder = WhisperEncoder(config).eval()
    hf = kernel_to_encoder(converted.read_encoder_weights(), converted.dims)
    state = {k.removeprefix("encoder."): torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf.items()}
    encoder.load_state_dict(state, strict=True)
    return encoder


def torch_states(encoder, mel: np.ndarray) -> dict[str, np.ndarray]:
    """Boundary tensors of PyTorch's forward pass (in the encoder's dtype), under our graph's names."""
    torch, _ = torch_modules()
    dtype = next(encoder.parameters()).dtype
    got = {}
    hooks = [encoder.conv1.register_forward_hook(
        lambda m, i, o: got.__setitem__("conv1", torch.nn.functional.gelu(o)[0].T))]
    for idx, layer in enumerate(encoder.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, idx=idx: got.__setitem__(block_output(idx), (o[0] if isinstance(o, tuple) else o)[0])))
    try:
        with torch.no_grad():
            out = encoder(torch.from_numpy(mel[None]).to(dtype), output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    got["embed"] = out.hidden_states[0][0]
    got[OUTPUT] = out.last_hidden_state[0]
    return {k: v.float().numpy() for k, v in got.items()}


def torch_whisper(converted):
    """transformers' WhisperForConditionalGeneration holding our converted weights, with a matching
    generation config (the reference for decoder logits and greedy transcripts)."""
    torch, transformers = torch_modules()
    config = transformers.WhisperConfig(**{k: v for k, v in converted.config.items() if k != "architectures"})
    model = transformers.WhisperForConditionalGeneration(config).eval()
    weights = {**kernel_to_encoder(converted.read_encoder_weights(), converted.dims), **converted.decoder_weights()}
    state = {f"model.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AmanuensisError(f"reference model: missing {missing}, unexpected {unexpected}")
    gen = converted.generation_config
    fields = dict(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, max_length=config.max_target_positions,
        suppress_tokens=config.suppress_tokens, begin_suppress_tokens=config.begin_suppress_tokens,
        no_timestamps_token_id=gen.get("no_timestamps_token_id"), is_multilingual=gen.get("is_multilingual", False),
        task_to_id=gen.get("task_to_id"), alignment_heads=gen.get("alignment_heads"))
    if gen.get("is_multilingual"):   # transformers detects the language whenever lang_to_id exists
        fields["lang_to_id"] = gen.get("lang_to_id")
    model.generation_config = transformers.GenerationConfig(**fields)
    return model
