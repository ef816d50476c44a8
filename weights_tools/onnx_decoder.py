"""Build the Whisper decoder as an ONNX graph (onnx package only; no torch), in two precisions.

fp32 (decoder.onnx): the initializers are not copied: each points into decoder.safetensors (ONNX
external data: file, offset, length), so the converted model keeps one copy of the decoder weights,
in Hugging Face layout. Linear layers are `Gemm` with transB=1 on (B·S, D) rows for that reason.

int8 (decoder-int8.onnx, the default): every linear layer and the output projection onto the
vocabulary (the tied token embedding) in 8 bits with one scale per block of 128 inputs
(quantize.py), run as ONNX Runtime's MatMulNBits, which quantizes its input per block of 128 too
and multiplies in integers; the 8-bit copies are held in the graph. The token embedding's rows,
layer norms, biases and positions stay fp32, external data in decoder.safetensors as above. A
greedy step is memory bound (one row against every weight): 8 bits read a quarter of the bytes.

The accuracy of each is measured in docs/performance.md. The graph's inputs and outputs are listed,
and named, in weights_tools/decoder_io.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from weights_tools import decoder_io as io
from weights_tools.dims import ModelDimensions
from weights_tools.quantize import quantize_blocks
from weights_tools.safetensors_io import read_header, read_safetensors

OPSET = 17
MS_DOMAIN, MS_OPSET = "com.microsoft", 1           # ONNX Runtime's contrib ops (MatMulNBits)

PRECISIONS = ("fp32", "int8")
VOCAB_PROJECTION = "decoder.embed_tokens"          # tied: the token embedding is the output projection


class _Builder:
    """Collects nodes, initializers and constants with unique names."""

    def __init__(self, weights_file: str = "", header: dict | None = None, data_start: int = 0,
                 arrays: dict[str, np.ndarray] | None = None, precision: str = "fp32"):
        """Weights come from a safetensors file (`weights_file`, its `header` and data offset) as
        external data, else from `arrays`; what `precision` quantizes is quantized from `arrays`."""
        import onnx
        from onnx import helper

        self.onnx, self.helper = onnx, helper
        self.nodes, self.inits, self.count = [], {}, 0
        self.weights_file, self.header, self.data_start = weights_file, header or {}, data_start
        self.arrays = arrays or {}
        self.precision = precision

    def quantized(self, prefix: str) -> bool:
        """Whether the linear layer `prefix` runs in int8."""
        return self.precision == "int8"

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs):
        """Add a node; its output name, or a tuple of `n_out` names."""
        self.count += 1
        outs = [f"{op_type.lower()}_{self.count}" + (f"_{i}" if n_out > 1 else "") for i in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else tuple(outs)

    def const(self, value, dtype=np.int64) -> str:
        self.count += 1
        name = f"const_{self.count}"
        self.inits[name] = self.onnx.numpy_helper.from_array(np.asarray(value, dtype), name)
        return name

    def array(self, name: str, value: np.ndarray, dtype=np.float32) -> str:
        """An initializer held in the model itself (for graphs built in memory)."""
        if name not in self.inits:
            self.inits[name] = self.onnx.numpy_helper.from_array(np.ascontiguousarray(value, dtype), name)
        return name

    def int8_weight(self, name: str, alpha: float = 1.0) -> tuple[str, str]:
        """Initializers (q (out, in / BLOCK, BLOCK) uint8, scale (out · in / BLOCK,) fp32) of weight
        `name`, quantized from `arrays` (quantize_blocks), the scales times `alpha`."""
        if f"{name}.q" not in self.inits:
            q, scale = quantize_blocks(self.arrays[name])
            self.array(f"{name}.q", q, np.uint8)
            self.array(f"{name}.scale", scale.reshape(-1) * np.float32(alpha))
        return f"{name}.q", f"{name}.scale"

    def scaled_weight(self, name: str, alpha: float) -> str:
        """The initializer of `name` times `alpha` (held in the graph), or the weight itself for 1."""
        if alpha == 1.0:
            return self.weight(name)
        return self.array(f"{name}.scaled", self.arrays[name] * np.float32(alpha))

    def model_bytes(self, name: str, inputs: list, outputs: list) -> bytes:
        """The collected nodes and initializers as a serialized ONNX model with these inputs and outputs."""
        graph = self.helper.make_graph(self.nodes, name, inputs, outputs, list(self.inits.values()))
        opsets = [self.helper.make_opsetid("", OPSET), self.helper.make_opsetid(MS_DOMAIN, MS_OPSET)]
        model = self.helper.make_model(graph, opset_imports=opsets, producer_name="amanuensis")
        model.ir_version = 8
        return model.SerializeToString()

    def weight(self, name: str) -> str:
        """The initializer of weight `name`: external data if the file has it, else in memory."""
        if name in self.inits:
            return name
        if name not in self.header:
            return self.array(name, self.arrays[name])
        info = self.header[name]
        begin, end = info["data_offsets"]
        tensor = self.onnx.TensorProto()
        tensor.name, tensor.data_type = name, self.onnx.TensorProto.FLOAT
        tensor.dims.extend(info["shape"])
        tensor.data_location = self.onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.weights_file), ("offset", str(self.data_start + begin)),
                           ("length", str(end - begin))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.inits[name] = tensor
        return name


def _linear(g: _Builder, x2d: str, prefix: str, bias: bool = True, alpha: float = 1.0) -> str:
    """y = alpha · (x · Wᵀ + b) on (rows, D) with W in HF layout (out, in). alpha is a power of two
    (the attention's query scale, 1/8 for Whisper's 64-wide heads): scaling by it is exact."""
    if g.quantized(prefix):
        return _linear_int8(g, x2d, f"{prefix}.weight", f"{prefix}.bias" if bias else None, alpha)
    inputs = [x2d, g.weight(f"{prefix}.weight")] + ([g.weight(f"{prefix}.bias")] if bias else [])
    scaled = {"alpha": alpha, "beta": alpha} if alpha != 1.0 else {}
    return g.op("Gemm", *inputs, transB=1, **scaled)


def _linear_int8(g: _Builder, x2d: str, weight: str, bias: str | None, alpha: float = 1.0) -> str:
    """y ≈ alpha · (x · Wᵀ + b) with W in 8-bit blocks (quantize_blocks; alpha folded into the scales
    and the bias). MatMulNBits at accuracy level 4 quantizes each block of x's row to int8 with its
    own scale and sums the integer products per block: y[n] = Σ_b xs_b · scale[n, b] · Σ_j xq · (q - 128)."""
    q, scale = g.int8_weight(weight, alpha)
    n, k = g.arrays[weight].shape
    y = g.op("MatMulNBits", x2d, q, scale, domain=MS_DOMAIN,
             K=k, N=n, bits=8, block_size=g.inits[q].dims[2], accuracy_level=4)
    return g.op("Add", y, g.scaled_weight(bias, alpha)) if bias else y


def _token_embedding(g: _Builder, ids: str) -> str:
    """Rows of the token embedding for `ids` (B, S) -> (B, S, D), fp32 in every precision: a step reads
    one row, and rows from the 8-bit copy changed a comma in one of the 18 real clips."""
    return g.op("Gather", g.weight(f"{VOCAB_PROJECTION}.weight"), ids)


def _heads(g: _Builder, x2d: str, shape_bshd: str) -> str:
    """(B·S, D) -> (B, H, S, d_head)."""
    return g.op("Transpose", g.op("Reshape", x2d, shape_bshd), perm=[0, 2, 1, 3])


def _merge(g: _Builder, x: str, shape_2d: str) -> str:
    """(B, H, S, d_head) -> (B·S, D)."""
    return g.op("Reshape", g.op("Transpose", x, perm=[0, 2, 1, 3]), shape_2d)


def _layernorm(g: _Builder, x: str, prefix: str) -> str:
    return g.op("LayerNormalization", x, g.weight(f"{prefix}.weight"), g.weight(f"{prefix}.bias"),
                axis=-1, epsilon=1e-5)


def _self_attention(g, x2d, p, i, s) -> tuple[str, str, str]:
    """Attention of the new tokens over the cached slots (< offset) and over each other (causal)."""
    q = _heads(g, _linear(g, x2d, f"{p}.q_proj", alpha=s["scale"]), s["bshd"])
    k = _heads(g, _linear(g, x2d, f"{p}.k_proj", bias=False), s["bshd"])
    v = _heads(g, _linear(g, x2d, f"{p}.v_proj"), s["bshd"])
    past = g.op("Add", g.op("MatMul", q, g.op("Transpose", io.past_key(i), perm=[0, 1, 3, 2])), s["past_mask"])
    new = g.op("Add", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), s["causal_mask"])
    probs = g.op("Softmax", g.op("Concat", past, new, axis=-1), axis=-1)
    p_past = g.op("Slice", probs, s["zero"], s["capacity"], s["minus1"])
    p_new = g.op("Slice", probs, s["capacity"], s["big"], s["minus1"])
    out = g.op("Add", g.op("MatMul", p_past, io.past_value(i)), g.op("MatMul", p_new, v))
    return _linear(g, _merge(g, out, s["flat"]), f"{p}.out_proj"), k, v


def _cross_attention(g, x2d, p, i, s) -> tuple[str, str]:
    """Attention of each row over its window's encoder output. A window's rows lie together in the
    batch (B = windows × group: its beams or samples, 1 when greedy), so the queries of a group are one
    (group·S)-row product against the window's K and V, which are bound once however many rows use
    them. Returns (output (B·S, D), probabilities (windows, H, group·S, T))."""
    q = g.op("Reshape", _linear(g, x2d, f"{p}.q_proj", alpha=s["scale"]), s["ngshd"])       # (n, g, S, H, d)
    q = g.op("Reshape", g.op("Transpose", q, perm=[0, 3, 1, 2, 4]), s["nhrd"])             # (n, H, g·S, d)
    probs = g.op("Softmax", g.op("MatMul", q, g.op("Transpose", io.cross_key(i), perm=[0, 1, 3, 2])), axis=-1)
    out = g.op("Reshape", g.op("MatMul", probs, io.cross_value(i)), s["nhgsd"])           # (n, H, g, S, d)
    out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 3, 1, 4]), s["flat"])         # (B·S, D)
    return _linear(g, out, f"{p}.out_proj"), probs


def _gelu(g, x) -> str:
    """Exact erf GELU (ORT fuses the pattern into its Gelu kernel)."""
    e = g.op("Erf", g.op("Mul", x, g.const(1 / math.sqrt(2), np.float32)))
    return g.op("Mul", g.op("Mul", x, g.const(0.5, np.float32)), g.op("Add", e, g.const(1.0, np.float32)))


def _shapes(g: _Builder, dims: ModelDimensions) -> dict:
    """Shape tensors and masks that depend on the dynamic batch, length and offset."""
    shape = g.op("Shape", io.INPUT_IDS)
    b, s_len = g.op("Slice", shape, g.const([0]), g.const([1])), g.op("Slice", shape, g.const([1]), g.const([2]))
    heads, d_head = g.const([dims.n_text_head]), g.const([dims.n_text_state // dims.n_text_head])
    windows, minus1 = g.op("Slice", g.op("Shape", io.cross_key(0)), g.const([0]), g.const([1])), g.const([-1])
    neg_inf, zero_f = g.const(-np.inf, np.float32), g.const(0.0, np.float32)
    s_scalar = g.op("Squeeze", s_len, g.const([0]))
    new_pos = g.op("Range", g.const(0), s_scalar, g.const(1))                          # (S,)
    # the cache holds as many slots as the host has allocated (it grows them as tokens come), so a
    # step reads the filled slots and a few more, not all n_text_ctx
    capacity = g.op("Slice", g.op("Shape", io.past_key(0)), g.const([2]), g.const([3]))   # (1,)
    slots = g.op("Range", g.const(0), g.op("Squeeze", capacity, g.const([0])), g.const(1))  # (capacity,)
    # A row's first `pad` slots hold padding (a batch's shorter prompts are right-aligned to the
    # longest): no token attends to them, and its positions count from its first real slot.
    pad = g.op("Unsqueeze", io.PAD, g.const([1]))                                      # (B, 1)
    filled = g.op("And", g.op("Less", slots, io.OFFSET),
                  g.op("GreaterOrEqual", g.op("Unsqueeze", slots, g.const([0])), pad))   # (B, capacity)
    past_mask = g.op("Unsqueeze", g.op("Where", filled, zero_f, neg_inf), g.const([1, 2]))  # (B, 1, 1, capacity)
    new_slots = g.op("Unsqueeze", g.op("Add", new_pos, io.OFFSET), g.const([0]))       # (1, S)
    keys, queries = g.op("Unsqueeze", new_pos, g.const([0])), g.op("Unsqueeze", new_pos, g.const([1]))
    real = g.op("Unsqueeze", g.op("GreaterOrEqual", new_slots, pad), g.const([1]))     # (B, 1, S) real keys
    # a padding token attends to itself alone, so that its softmax stays finite
    allowed = g.op("And", g.op("LessOrEqual", keys, queries), g.op("Or", real, g.op("Equal", keys, queries)))
    causal_mask = g.op("Unsqueeze", g.op("Where", allowed, zero_f, neg_inf), g.const([1]))  # (B, 1, S, S)
    positions = g.op("Max", g.op("Sub", new_slots, pad), g.const(0))                   # (B, S)
    return {
        "bshd": g.op("Concat", b, s_len, heads, d_head, axis=0),
        "ngshd": g.op("Concat", windows, minus1, s_len, heads, d_head, axis=0),
        "nhrd": g.op("Concat", windows, heads, minus1, d_head, axis=0),
        "nhgsd": g.op("Concat", windows, heads, minus1, s_len, d_head, axis=0),
        "b1st": g.op("Concat", b, g.const([1]), s_len, g.const([dims.n_audio_ctx]), axis=0),
        "flat": g.const([-1, dims.n_text_state]),
        # the query scale rides on the query projection: as a Mul before q · Kᵀ, ONNX Runtime folds
        # it into the MatMul, whose one-row kernel then packs Kᵀ at every step (3x slower, measured)
        "scale": 1 / math.sqrt(dims.n_text_state // dims.n_text_head),
        "past_mask": past_mask, "causal_mask": causal_mask, "positions": positions,
        "zero": g.const([0]), "capacity": capacity, "big": g.const([2**62]), "minus1": g.const([-1]),
        "bsd": g.op("Concat", b, s_len, g.const([dims.n_text_state]), axis=0),
        "bsv": g.op("Concat", b, g.const([-1]), g.const([dims.n_vocab]), axis=0),
        "from": g.op("Unsqueeze", io.LOGITS_FROM, g.const([0])),
    }


def build_decoder_onnx(dims: ModelDimensions, precision: str, weights_path: Path, alignment_heads=()) -> bytes:
    """Serialized ONNX decoder of `precision` (PRECISIONS) for the decoder weights in `weights_path`
    (safetensors, Hugging Face names): fp32 weights stay there as external data (the graph goes in the
    same directory); int8's linear weights are quantized (quantize.py) into the graph."""
    header, start = read_header(weights_path)
    arrays = read_safetensors(weights_path) if precision == "int8" else {}
    return _build(_Builder(Path(weights_path).name, header, start, arrays, precision), dims, alignment_heads)


def _build(g: _Builder, dims: ModelDimensions, alignment_heads) -> bytes:
    """The decoder graph on `g`'s weights, serialized."""
    from onnx import TensorProto, helper

    s = _shapes(g, dims)
    d_head = dims.n_text_state // dims.n_text_head
    x = g.op("Add", _token_embedding(g, io.INPUT_IDS),
             g.op("Gather", g.weight("decoder.embed_positions.weight"), s["positions"]))
    x = g.op("Reshape", x, s["flat"])                                                  # (B·S, D)
    outputs, align = [], {}
    for i in range(dims.n_text_layer):
        p = f"decoder.layers.{i}"
        attn, k, v = _self_attention(g, _layernorm(g, x, f"{p}.self_attn_layer_norm"), f"{p}.self_attn", i, s)
        g.nodes += [helper.make_node("Identity", [k], [io.new_key(i)]),
                    helper.make_node("Identity", [v], [io.new_value(i)])]
        x = g.op("Add", x, attn)
        cross, probs = _cross_attention(g, _layernorm(g, x, f"{p}.encoder_attn_layer_norm"), f"{p}.encoder_attn", i, s)
        x = g.op("Add", x, cross)
        h = _linear(g, _gelu(g, _linear(g, _layernorm(g, x, f"{p}.final_layer_norm"), f"{p}.fc1")), f"{p}.fc2")
        x = g.op("Add", x, h)
        for layer, head in alignment_heads:
            if layer == i:
                # (n, 1, g·S, T) is (B, 1, S, T) in memory: the rows of a window's group are consecutive
                one = g.op("Slice", probs, g.const([head]), g.const([head + 1]), g.const([1]))
                align[(layer, head)] = g.op("Reshape", one, s["b1st"])
    wanted = g.op("Slice", g.op("Reshape", x, s["bsd"]), s["from"], s["big"], g.const([1]))     # (B, S', D)
    wanted = g.op("Reshape", wanted, s["flat"])
    logits = _linear(g, _layernorm(g, wanted, "decoder.layer_norm"), "decoder.embed_tokens", bias=False)
    g.nodes.append(helper.make_node("Reshape", [logits, s["bsv"]], [io.LOGITS]))
    cache = ["batch", dims.n_text_head, "capacity", d_head]
    cross_shape = ["windows", dims.n_text_head, dims.n_audio_ctx, d_head]
    inputs = [helper.make_tensor_value_info(io.INPUT_IDS, TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info(io.OFFSET, TensorProto.INT64, []),
              helper.make_tensor_value_info(io.PAD, TensorProto.INT64, ["batch"]),
              helper.make_tensor_value_info(io.LOGITS_FROM, TensorProto.INT64, [])]
    new_shape = ["batch", dims.n_text_head, "seq", d_head]
    for i in range(dims.n_text_layer):
        inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
                   for name, shape in ((io.past_key(i), cache), (io.past_value(i), cache),
                                       (io.cross_key(i), cross_shape), (io.cross_value(i), cross_shape))]
        outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, new_shape)
                    for name in (io.new_key(i), io.new_value(i))]
    outputs.insert(0, helper.make_tensor_value_info(io.LOGITS, TensorProto.FLOAT, ["batch", "wanted", dims.n_vocab]))
    if align:
        g.nodes.append(helper.make_node("Concat", [align[h] for h in alignment_heads], [io.ALIGNMENT], axis=1))
        outputs.append(helper.make_tensor_value_info(io.ALIGNMENT, TensorProto.FLOAT,
                                                     ["batch", len(alignment_heads), "seq", dims.n_audio_ctx]))
    return g.model_bytes("whisper_decoder", inputs, outputs)
