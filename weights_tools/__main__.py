"""python -m weights_tools: convert Whisper checkpoints into Amanuensis model directories."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kernels.errors import AmanuensisError, run_main
from weights_tools.convert import convert, source_format
from weights_tools.model_dir import ConvertedModel
from weights_tools.resolve import DEFAULT_MODEL, bundled_tiny_en, hub_download, resolve_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m weights_tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a Whisper checkpoint into an Amanuensis model directory",
                          description="SOURCE is a Hugging Face Whisper directory (config.json, model.safetensors "
                          "or a sharded index, tokenizer.json), a CTranslate2 Whisper directory (model.bin, "
                          "config.json, tokenizer.json), a default name such as tiny.en, or a Hugging Face hub "
                          "id such as openai/whisper-small (needs internet).")
    conv.add_argument("source", help="model directory, default name or hub id")
    conv.add_argument("--out", required=True, type=Path, help="directory to create (must not exist)")
    conv.add_argument("--force", action="store_true", help="replace OUT if it is an earlier converted model")
    info = sub.add_parser("info", help="print a model's dims and files as JSON (converting it first if needed)")
    info.add_argument("model", help="anything --model accepts")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        model = ConvertedModel.open(resolve_model(args.model))
        print(json.dumps({"path": str(model.path), **model.manifest}, indent=2))
        return 0
    source = Path(args.source).expanduser()
    if not source.exists():
        source = bundled_tiny_en() if args.source == DEFAULT_MODEL else hub_download(args.source)
    elif source_format(source) == "converted":
        raise AmanuensisError(f"{source}: already a converted model (use it as --model directly)")
    out = convert(source, args.out, force=args.force)
    print(f"converted {source} -> {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
