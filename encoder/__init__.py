"""Amanuensis: a Whisper speech encoder for AMD Ryzen AI NPUs, with CPU backends and an ONNX Runtime decoder.

    from encoder import load_model
    model = load_model("tiny.en")                       # default name, model directory or hub id
    result = model.transcribe("speech.flac")            # Transcription: text, segments, language, provenance
    states = model.embed("speech.flac").states          # (frames, d_model) hidden states, 50 frames/s

The Python API is this package's names below; README.md shows them in use.
"""
# ruff: noqa: E402 (the check below comes before the imports it protects)
import importlib.util as _util
from pathlib import Path as _Path

# Another distribution may install a package named `kernels` (Hugging Face's kernel hub, which
# transformers 5.25 and later require); outside this project's directory it is found before ours.
_found, _ours = _util.find_spec("kernels"), _Path(__file__).resolve().parent.parent / "kernels"
if _found is None or _Path(_found.origin or "").resolve().parent != _ours:
    raise ImportError(f"the package 'kernels' found at {_found.origin if _found else 'nowhere'} is not "
                      f"Amanuensis's ({_ours}): another distribution installs that name (Hugging Face's "
                      "`kernels`, which transformers 5.25 and later require); uninstall it (pip uninstall "
                      "kernels) or run from the Amanuensis directory")

from decoder.options import DecodingOptions, TranscribeOptions
from encoder.embedding import Embedding
from encoder.model import WhisperModel, load_model
from encoder.results import Provenance, Segment, Transcription, Word
from encoder.version import VERSION as __version__
from kernels.errors import AmanuensisError, BadAudio, BadOption, UndecodableAudio

__all__ = ["load_model", "WhisperModel", "Transcription", "Segment", "Word", "Provenance", "Embedding",
           "TranscribeOptions", "DecodingOptions", "AmanuensisError", "BadAudio", "BadOption", "UndecodableAudio",
           "__version__"]
