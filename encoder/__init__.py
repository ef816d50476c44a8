"""Amanuensis: a Whisper speech encoder for AMD Ryzen AI NPUs, with CPU backends and an ONNX Runtime decoder.

    from encoder import load_model
    model = load_model("tiny.en")                       # default name, model directory or hub id
    result = model.transcribe("speech.flac")            # Transcription: text, segments, language, provenance
    states = model.embed("speech.flac").states          # (frames, d_model) hidden states, 50 frames/s

The Python API is this package's names below; README.md shows them in use.
"""
from decoder.options import DecodingOptions, TranscribeOptions
from encoder.embedding import Embedding
from encoder.model import WhisperModel, load_model
from encoder.results import Provenance, Segment, Transcription, Word
from encoder.version import VERSION as __version__
from kernels.errors import AmanuensisError, BadAudio, BadOption, UndecodableAudio

__all__ = ["load_model", "WhisperModel", "Transcription", "Segment", "Word", "Provenance", "Embedding",
           "TranscribeOptions", "DecodingOptions", "AmanuensisError", "BadAudio", "BadOption", "UndecodableAudio",
           "__version__"]
