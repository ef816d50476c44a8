"""Amanuensis: a from-scratch Whisper encoder for AMD Ryzen AI NPUs, with CPU backends.

    from encoder import load_model
    model = load_model("tiny.en", device="cpu")
    states = model.embed("speech.flac")    # (frames, d_model) hidden states, 50 frames/s
"""


def __getattr__(name):
    # Lazy, so that `python -m weights_tools` does not pay for the whole encoder.
    if name == "load_model":
        from encoder.model import load_model

        return load_model
    raise AttributeError(name)
