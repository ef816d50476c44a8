"""What every command-line entry point shares: user errors become one clear line and exit 2."""
from __future__ import annotations

import sys


def run_main(main, argv=None) -> None:
    """Run `main(argv)`; an AmanuensisError prints `error: <message>` and exits 2, no traceback."""
    from encoder.errors import AmanuensisError
    from encoder.memory import tune_allocator

    tune_allocator()
    try:
        code = main(argv)
    except AmanuensisError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
