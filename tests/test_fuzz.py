"""Property-based fuzzing of the loaders users point at files: safetensors, config, audio.

Whatever the bytes, each ends in the project's own clear error (AmanuensisError) or a
result, never another exception; hostile length fields never size an allocation.
(The CTranslate2 reader's fuzzing is in test_weights.py.)
"""
import io
import json
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from encoder.audio import MIN_SAMPLE_RATE, load_audio
from kernels.errors import AmanuensisError
from weights_tools.dims import ModelDimensions
from weights_tools.safetensors_io import read_safetensors

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _safetensors(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _valid() -> bytes:
    data = np.arange(12, dtype=np.float32).tobytes()
    return _safetensors({"a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}, data)


def _corrupted(path, blob: bytes, offset: int, value: bytes):
    """Write `blob` to `path` with `value` written over it at `offset`; returns path."""
    data = bytearray(blob)
    data[offset:offset + len(value)] = value
    path.write_bytes(bytes(data))
    return path


def _bounded(call, limit_mb: float = 16.0):
    """Run call(); return its result or its AmanuensisError, asserting peak Python-side memory."""
    tracemalloc.start()
    try:
        return call()
    except AmanuensisError as e:
        return e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < limit_mb * 2**20, f"peak {peak / 2**20:.1f} MB"


big = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**62, 2**63, 2**64]))
entry = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "X9", ""]), st.integers()),
    "shape": st.one_of(st.lists(big, max_size=4), st.text(max_size=3), st.none()),
    "data_offsets": st.one_of(st.lists(big, min_size=0, max_size=3), st.none(), st.text(max_size=2)),
})


@FUZZ
@given(header=st.dictionaries(st.text(max_size=8), st.one_of(entry, st.integers(), st.none()), max_size=4),
       data=st.binary(max_size=64))
def test_safetensors_hostile_headers(tmp_path, header, data):
    path = tmp_path / "x.safetensors"
    path.write_bytes(_safetensors(header, data))
    result = _bounded(lambda: read_safetensors(path))
    if not isinstance(result, AmanuensisError):
        assert all(a.nbytes <= len(data) * 8 for a in result.values())   # every tensor came from the file


@FUZZ
@given(offset=st.integers(0, 120), value=st.binary(min_size=1, max_size=8))
def test_safetensors_corrupt_bytes(tmp_path, offset, value):
    path = _corrupted(tmp_path / "x.safetensors", _valid(), offset, value)
    _bounded(lambda: read_safetensors(path))


def test_safetensors_wrapping_shape_is_refused(tmp_path):
    """[2**62, 4] F32 is 2**66 bytes: an int64 product wraps to 0 and would pass a 0-byte range."""
    path = tmp_path / "x.safetensors"
    path.write_bytes(_safetensors({"a": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}}))
    with pytest.raises(AmanuensisError, match="tensor 'a'.*do not fit"):
        read_safetensors(path)


@FUZZ
@given(config=st.dictionaries(st.sampled_from(list(ModelDimensions._HF_FIELDS.values()) + ["model_type"]),
                              st.one_of(big, st.text(max_size=4), st.booleans(), st.none(), st.floats()),
                              max_size=14))
def test_config_fields(config):
    result = _bounded(lambda: ModelDimensions.from_hf_config(config))
    if isinstance(result, ModelDimensions):
        assert all(0 < v <= 1 << 20 for v in result.as_dict().values())


def _wav(seconds: float = 0.5) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(int(16000 * seconds), np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from([".wav", ".flac", ".mp3", ".ogg", ".m4a"]), data=st.binary(max_size=600))
def test_audio_random_bytes(tmp_path, suffix, data):
    path = tmp_path / f"in{suffix}"
    path.write_bytes(data)
    result = _bounded(lambda: load_audio(path), limit_mb=64)
    if not isinstance(result, AmanuensisError):
        assert result.dtype == np.float32 and np.isfinite(result).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 43), value=st.binary(min_size=1, max_size=4))
@example(offset=24, value=b"\x00\x01")            # found in CI: 256 Hz, 31 s of samples from a 16 KB file
def test_wav_header_fields(tmp_path, offset, value):
    """Corrupt RIFF/fmt/data fields, including 0xFFFFFFFF chunk lengths, of a 0.5 s WAV."""
    blob = _wav()
    path = _corrupted(tmp_path / "in.wav", blob, offset, value)
    result = _bounded(lambda: load_audio(path), limit_mb=64)
    if not isinstance(result, AmanuensisError):
        # output proportional to the file: a corrupted format tag may select a codec packing several
        # samples per byte (ADPCM, GSM: up to ~5), upsampled at most 16000 / MIN_SAMPLE_RATE times
        assert len(result) <= 8 * len(blob) * 16000 // MIN_SAMPLE_RATE and np.isfinite(result).all()


def test_a_header_claiming_1_hz_is_refused(tmp_path):
    """0.5 s of 16 kHz audio relabelled as 1 Hz would resample to 128 M samples."""
    path = _corrupted(tmp_path / "in.wav", _wav(), 24, struct.pack("<I", 1))
    with pytest.raises(AmanuensisError, match="sample rate 1 Hz is too low for speech"):
        load_audio(path)
