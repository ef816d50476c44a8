"""python -m encoder.embed: export encoder hidden states of audio files.

Writes .safetensors (one tensor per input, keyed by file name, metadata in the
header) or .npy (one input, or several with --pool mean, metadata in FILE.json).
States are trimmed to each file's real length at 50 frames per second; audio
longer than 30 s is encoded in consecutive 30 s windows.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from encoder.audio import check_audio_path
from encoder.cli import add_device, add_model, layer_option, report_device, run, say
from encoder.embedding import POOLINGS, check_output, write_embeddings
from encoder.model import load_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m encoder.embed", description=__doc__.split("\n\n")[0],
                                epilog="--layer follows Hugging Face's hidden_states numbering: 0 is the conv stem "
                                "plus positional embedding, N the output of block N, and the number of blocks (the "
                                "default) the final encoder output after ln_post; 'all' exports every one.")
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3, m4a, ...)")
    p.add_argument("--output", "-o", required=True, type=Path, help="output file, .safetensors or .npy")
    p.add_argument("--layer", type=layer_option, default=None, help="hidden state N, or 'all' (default: final output)")
    p.add_argument("--pool", choices=POOLINGS, default="none", help="average over frames (default none)")
    add_model(p)
    add_device(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--profile", action="store_true", help="print per-node backend and time to stderr")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_output(args.output, args.force, len(args.audio), args.pool)
    for audio in args.audio:
        check_audio_path(audio)
    model = load_model(args.model, args.device, args.strict)
    report_device(model)
    results = []
    for audio in args.audio:
        result = model.embed(audio, layer=args.layer, pool=args.pool)
        say(f"{audio}: {result.seconds:.2f} s -> {result.frames} frames, states {list(result.states.shape)}")
        if args.profile:
            say("per-node profile\n" + result.profile.format())
        results.append(result)
    meta = {"model": args.model, "model_dims": model.dims.as_dict(), "layer": results[0].layer,
            "pool": args.pool, "device": model.backend.name}
    write_embeddings(args.output, args.audio, results, meta)
    say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    run(main)
