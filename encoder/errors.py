"""The one error type users see: a clear message about their input, never a traceback."""


class AmanuensisError(Exception):
    """A problem with the user's input (file, model, tensor, shape or option).

    Command-line entry points print its message and exit non-zero; anything
    else escaping is a bug in Amanuensis and keeps its traceback.
    """


class UndecodableAudio(AmanuensisError):
    """The input is not audio we can decode (wrong type, corrupt or truncated container)."""
