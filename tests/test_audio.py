"""Audio decoding, resampling and Whisper's log-mel (checked against transformers)."""
import numpy as np
import pytest
import soundfile

from encoder.audio import load_audio, resample, windows
from kernels.errors import AmanuensisError
from kernels.frontend import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, mel_filters


def tone(seconds=1.0, rate=SAMPLE_RATE, freq=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return mono if channels == 1 else np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1)


def encode_with_av(path, samples, rate, codec):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def feature_extractor(n_mels):
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperFeatureExtractor(feature_size=n_mels)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers_on_random_audio(n_mels):
    rng = np.random.default_rng(n_mels)
    for samples in (0.1 * rng.standard_normal(7 * SAMPLE_RATE), 0.3 * rng.standard_normal(N_SAMPLES + 999)):
        samples = samples.astype(np.float32)
        ref = feature_extractor(n_mels)(samples, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        ours = log_mel_spectrogram(samples, n_mels)
        assert ours.shape == ref.shape == (n_mels, 3000)
        assert np.abs(ours - ref).max() < 1e-4


def test_log_mel_matches_transformers_on_real_speech(speech):
    for clip in speech[:6]:
        samples = load_audio(clip.path)
        ref = feature_extractor(80)(samples, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        assert np.abs(log_mel_spectrogram(samples, 80) - ref).max() < 1e-4, clip.file


@pytest.mark.parametrize("n", [0, 1, 150, 7 * SAMPLE_RATE + 37, N_SAMPLES - 201, N_SAMPLES, N_SAMPLES + 999])
def test_log_mel_skips_only_frames_of_padding(n):
    """The frames past the samples are not transformed: the log-mel is the formula's over all 3000 frames
    (to 1e-6, as the float64 product over fewer frames may sum in another order on another BLAS)."""
    from kernels.frontend import frames, hann_window

    samples = (0.1 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    samples = np.concatenate([samples, np.zeros(N_SAMPLES // 3, np.float32)])[:max(n, N_SAMPLES)]  # padded
    power = np.abs(np.fft.rfft(frames(samples) * hann_window(), axis=-1)) ** 2
    log_spec = np.log10(np.maximum(mel_filters(80) @ power.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    np.testing.assert_allclose(log_mel_spectrogram(samples, 80), ((log_spec + 4.0) / 4.0).astype(np.float32),
                               rtol=0, atol=1e-6)


def test_log_mel_transforms_no_frame_of_trailing_zeros(monkeypatch):
    """A 5 s clip padded to 30 s (as a window is): only the frames that reach its samples are transformed."""
    from kernels.frontend import pad_window

    rfft, rows = np.fft.rfft, []
    monkeypatch.setattr(np.fft, "rfft", lambda x, **kw: rows.append(len(x)) or rfft(x, **kw))
    clip = (0.1 * np.random.default_rng(5).standard_normal(5 * SAMPLE_RATE)).astype(np.float32)
    clip[SAMPLE_RATE:2 * SAMPLE_RATE] = 0.0                     # silence inside the clip is transformed
    log_mel_spectrogram(pad_window(clip), 80)
    assert rows == [-(-(5 * SAMPLE_RATE + 200) // 160)]


def test_mel_filters_are_slaney_normalised():
    filters = mel_filters(80)
    assert filters.shape == (80, 201)
    assert np.all(filters >= 0) and np.all(filters.max(axis=1) > 0)


@pytest.mark.parametrize("suffix, rate, channels", [(".wav", 16000, 1), (".wav", 44100, 2), (".flac", 8000, 6),
                                                    (".ogg", 22050, 1)])
def test_soundfile_formats_mixed_and_resampled(tmp_path, suffix, rate, channels):
    path = tmp_path / f"clip{suffix}"
    soundfile.write(str(path), tone(1.5, rate, channels=channels), rate)
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - int(1.5 * SAMPLE_RATE)) <= 2
    expected_amplitude = 0.5 * np.mean([(c + 1) / channels for c in range(channels)])
    assert abs(np.abs(samples[1000:-1000]).max() - expected_amplitude) < 0.02


@pytest.mark.parametrize("codec, suffix", [("libmp3lame", ".mp3"), ("aac", ".m4a"), ("libopus", ".opus")])
def test_pyav_formats(tmp_path, codec, suffix):
    path = tmp_path / f"clip{suffix}"
    rate = 48000 if codec == "libopus" else 44100
    encode_with_av(path, tone(2.0, rate), rate, codec)
    samples = load_audio(path)
    assert abs(len(samples) / SAMPLE_RATE - 2.0) < 0.1
    spectrum = np.abs(np.fft.rfft(samples[4000:20000]))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / 16000 - 440) < 5


def test_resample_keeps_pitch():
    out = resample(tone(1.0, 44100, freq=1000.0), 44100)
    assert len(out) == SAMPLE_RATE
    assert abs(np.argmax(np.abs(np.fft.rfft(out))) - 1000) <= 1


def test_windows_cover_long_audio():
    samples = np.zeros(N_SAMPLES * 2 + 5, np.float32)
    parts = windows(samples)
    assert [s for s, _ in parts] == [0, N_SAMPLES, 2 * N_SAMPLES]
    assert sum(len(p) for _, p in parts) == len(samples)


def test_bad_audio_messages(tmp_path):
    with pytest.raises(AmanuensisError, match="missing.wav: file not found"):
        load_audio(tmp_path / "missing.wav")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio at all\n" * 20)
    with pytest.raises(AmanuensisError, match="notes.wav: cannot decode audio"):
        load_audio(text)
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, np.float32), 16000)
    with pytest.raises(AmanuensisError, match="empty.wav: contains no audio samples"):
        load_audio(empty)
    nan = tmp_path / "nan.wav"
    soundfile.write(str(nan), np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AmanuensisError, match="NaN or infinite"):
        load_audio(nan)
    with pytest.raises(AmanuensisError, match="is a directory"):
        load_audio(tmp_path)


def test_truncated_flac_streams_to_a_clear_error(tmp_path):
    from encoder.audio import AudioStream
    from kernels.errors import UndecodableAudio

    path = tmp_path / "cut.flac"
    soundfile.write(str(path), tone(5.0), SAMPLE_RATE)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(UndecodableAudio, match="cut.flac: cannot decode audio"):
        stream = AudioStream(path)
        stream.window(0, 480000)
