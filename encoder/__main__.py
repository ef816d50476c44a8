"""amanuensis COMMAND ... (also `python -m encoder COMMAND ...`): every command under one name.

Each command is the module `python -m` runs (encoder.transcribe, ...); only the one asked for is
imported, so `amanuensis transcribe` starts no faster or slower than `python -m encoder.transcribe`.
"""
from __future__ import annotations

import importlib
import sys

from encoder.cli import run
from encoder.version import VERSION

COMMANDS = {
    "transcribe": ("encoder.transcribe", "speech to text"),
    "embed": ("encoder.embed", "export encoder hidden states"),
    "batch": ("encoder.batch", "an archive as a resumable Ray job (transcripts or embeddings)"),
    "evaluate": ("encoder.evaluate", "word error rate over a manifest of clips"),
    "serve": ("encoder.serve", "the HTTP service (OpenAI audio API)"),
    "graph": ("encoder.graph", "print the encoder's layer graph (and an NPU projection)"),
    "parity": ("encoder.parity", "layer-by-layer parity with PyTorch (test extras)"),
    "kernel-report": ("encoder.kernel_report", "each emulated NPU kernel against fp32"),
    "bench": ("encoder.bench", "measure speed and memory beside the peers"),
    "convert": ("weights_tools.__main__", "convert a checkpoint into a model directory"),
    "info": ("weights_tools.__main__", "print a model's dims and files"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:14} {what}" for name, (_, what) in COMMANDS.items())
    return f"usage: amanuensis COMMAND [options]   (amanuensis COMMAND --help for its options)\n\ncommands:\n{rows}"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"amanuensis {VERSION}")
        sys.exit(0)
    name, *rest = argv
    if name not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown command {name!r}", file=sys.stderr)
        sys.exit(2)
    module_name = COMMANDS[name][0]
    module = importlib.import_module(module_name)          # only the command asked for
    sys.argv[0] = f"amanuensis {name}"
    if module_name == "weights_tools.__main__":
        rest = [name, *rest]                               # convert and info are its subcommands
    run(lambda _: module.main(rest))


if __name__ == "__main__":
    main()
