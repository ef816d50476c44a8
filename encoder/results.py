"""What transcription returns: words, segments, and the transcription with its provenance.

The writers, the server and the Python API all read these; `to_dict()` gives the JSON that
`python -m encoder.transcribe` writes (openai-whisper's keys, plus `provenance`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kernels.runner import Profile


@dataclass
class Word:
    word: str                    # as decoded, with its leading space
    start: float                 # seconds from the start of the file
    end: float
    probability: float           # mean probability of its tokens


@dataclass
class Segment:
    id: int
    seek: int                    # mel frame where its window started
    start: float                 # seconds from the start of the file
    end: float
    text: str
    tokens: list[int]
    temperature: float           # of the attempt that produced it
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None = None   # with word timestamps

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.words is None:
            del out["words"]
        return out


@dataclass(frozen=True)
class Provenance:
    """What computed a transcription: the backend of every encoder node (never a silent fallback)."""

    device: str                              # the encoder's backend
    device_note: str                         # why that backend (requested, or what auto found)
    decoder: str                             # what ran the decoder
    encoder_nodes: dict[str, list[str]]      # node -> backends that ran it
    fallbacks: dict[str, list[str]]          # node -> why it fell back (empty when none did)
    windows: int                             # encoder runs
    npu: dict | None = None                  # the NPU's kernels and their state, on the npu backend

    @classmethod
    def of(cls, model, profile: Profile) -> Provenance:
        nodes = profile.nodes().values()
        return cls(model.backend.name, model.device_note, model.describe_decoder(),
                   {s.node: list(s.backends) for s in nodes},
                   {s.node: list(s.fallbacks) for s in nodes if s.fallbacks}, len(profile.runs),
                   model.backend.status())


@dataclass
class Transcription:
    text: str
    segments: list[Segment]
    language: str
    duration: float              # seconds of audio
    processing_seconds: float
    provenance: Provenance
    profile: Profile = field(default_factory=Profile, repr=False)   # per window, per encoder node
    # each decoded window's tokens (timestamps included), by the mel frame it starts at: what a
    # growing live buffer's next decoding is expected to begin with (DecodingOptions.draft)
    decoded: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False)

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words or ()]

    def to_dict(self, profile: bool = False) -> dict:
        """The JSON form; with `profile`, every encoder node's backend and time per window too."""
        out = {"text": self.text, "segments": [s.to_dict() for s in self.segments], "language": self.language,
               "duration": self.duration, "processing_seconds": self.processing_seconds,
               "provenance": asdict(self.provenance)}
        if self.provenance.npu is None:
            del out["provenance"]["npu"]
        if profile:
            out["encoder_profile"] = self.profile.to_json()
        return out
