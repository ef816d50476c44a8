"""ModelDimensions: the handful of numbers that fix every shape in a Whisper model.

Field names follow openai/whisper; `from_hf_config` reads them from a Hugging Face
`config.json` (the field names there are given beside each one).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from kernels.errors import AmanuensisError

MAX_DIM = 1 << 20


@dataclass(frozen=True)
class ModelDimensions:
    n_mels: int          # num_mel_bins: 80, or 128 for large-v3
    n_audio_ctx: int     # max_source_positions: 1500 encoder positions
    n_audio_state: int   # d_model
    n_audio_head: int    # encoder_attention_heads
    n_audio_layer: int   # encoder_layers
    n_audio_mlp: int     # encoder_ffn_dim (4 * d_model in every released size)
    n_vocab: int         # vocab_size: 51864 English-only, 51865 multilingual, 51866 large-v3
    n_text_ctx: int      # max_target_positions: 448
    n_text_state: int    # d_model (shared with the encoder in HF Whisper)
    n_text_head: int     # decoder_attention_heads
    n_text_layer: int    # decoder_layers
    n_text_mlp: int      # decoder_ffn_dim

    _HF_FIELDS = {
        "n_mels": "num_mel_bins", "n_audio_ctx": "max_source_positions",
        "n_audio_state": "d_model", "n_audio_head": "encoder_attention_heads",
        "n_audio_layer": "encoder_layers", "n_audio_mlp": "encoder_ffn_dim",
        "n_vocab": "vocab_size", "n_text_ctx": "max_target_positions",
        "n_text_state": "d_model", "n_text_head": "decoder_attention_heads",
        "n_text_layer": "decoder_layers", "n_text_mlp": "decoder_ffn_dim",
    }

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise AmanuensisError(f"model dims: {name} must be a positive integer, got {value!r}")
            if value > MAX_DIM:     # a hostile config must not size allocations; large-v3 peaks at 51866
                raise AmanuensisError(f"model dims: {name} = {value} is beyond any Whisper model (at most {MAX_DIM})")
        for state, head in ((self.n_audio_state, self.n_audio_head), (self.n_text_state, self.n_text_head)):
            if state % head:
                raise AmanuensisError(f"model dims: d_model {state} is not divisible by {head} heads")

    @property
    def head_dim(self) -> int:
        return self.n_audio_state // self.n_audio_head

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @classmethod
    def from_hf_config(cls, config: dict, source: str = "config.json") -> ModelDimensions:
        """Read the dims from a Hugging Face Whisper config dict; name what is missing."""
        if config.get("model_type", "whisper") != "whisper":
            raise AmanuensisError(f"{source}: model_type is {config.get('model_type')!r}, not 'whisper'")
        values = {}
        for ours, theirs in cls._HF_FIELDS.items():
            if theirs not in config:
                raise AmanuensisError(f"{source}: missing field {theirs!r} (needed for {ours})")
            values[ours] = config[theirs]
        return cls(**values)

    def hf_fields(self) -> dict:
        """The Hugging Face config fields these dims stand for."""
        return {theirs: getattr(self, ours) for ours, theirs in self._HF_FIELDS.items()}

    def as_dict(self) -> dict:
        return asdict(self)
