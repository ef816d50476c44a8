"""The errors users see, and how every command reports them: one line `error: ...`, exit status 2.

An AmanuensisError is a problem with the user's input (file, model, tensor, shape or option),
never a bug: commands print its message and no traceback. Anything else escaping is a bug in
Amanuensis and keeps its traceback.
"""
from __future__ import annotations

import os
import sys

EXIT_USER_ERROR = 2          # bad input: file, model, option
EXIT_INTERRUPTED = 130       # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_CLOSED_PIPE = 141       # 128 + SIGPIPE, as a shell reports `... | head`


class AmanuensisError(Exception):
    """A problem with the user's input (file, model, tensor, shape or option)."""


class BadAudio(AmanuensisError):
    """One audio input is unusable (missing, not a regular file, empty, too short, NaN samples);
    the others of the same run are not affected."""


class UndecodableAudio(BadAudio):
    """The input is not audio we can decode (wrong type, corrupt or truncated container)."""


class BadOption(AmanuensisError):
    """An option value that cannot be honoured; `option` names it as the Python API and the
    HTTP API spell it (e.g. "language", "temperature")."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def print_error(error: AmanuensisError) -> None:
    """The one line a command shows for a user error."""
    print(f"error: {error}", file=sys.stderr, flush=True)


def run_main(main, argv=None) -> None:
    """Run a command's `main(argv)` and exit with its status. An AmanuensisError prints
    `error: <message>` and exits 2; Ctrl-C exits 130; a reader that closes the pipe early (`| head`)
    ends the command quietly."""
    try:
        code = main(argv)
        sys.stdout.flush()                  # a closed pipe shows here, not at interpreter exit
    except AmanuensisError as e:
        print_error(e)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # Python would report the failed flush of stdout again at exit: point stdout at /dev/null
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_CLOSED_PIPE)
    sys.exit(code or 0)
