"""What every command-line entry point shares: user errors become one clear line and exit 2."""
from __future__ import annotations

import sys


def add_decoder_precision(parser) -> None:
    """The --decoder-precision option every transcribing command takes."""
    from weights_tools.model_dir import DECODER_PRECISIONS

    parser.add_argument("--decoder-precision", choices=DECODER_PRECISIONS, default="fp32",
                        help="decoder weights: fp32, or int8 (about twice as fast per token; see README) "
                             "(default fp32)")


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
