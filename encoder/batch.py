"""python -m encoder.batch: transcribe (or translate) or embed an archive (files, directories, globs,
JSON Lines manifests) into one output directory, as a Ray job: embedded in this process by default,
on a cluster with --ray-address.

--task transcribe or translate writes transcripts; --task embed writes encoder hidden states.

Each output is written whole or not at all; OUT/ledger.jsonl lists every input that ended, done or
failed with the reason. Running the same command again skips what is done (same content, same
options, outputs present) and does the rest: an interrupted or crashed run loses nothing. One input
that cannot be transcribed fails alone; the exit status is then 2.

Outputs: OUT/transcripts/NAME.FORMAT; or OUT/embeddings/shard-*.safetensors (one tensor per input,
named by its key) with OUT/embeddings/index.json mapping each input to its shard, tensor and frames.
NAME is the input's path under the directory it was found in, its manifest id, or its file's stem.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from encoder.archive.job import Job
from encoder.archive.run import run_archive
from encoder.cli import (
    add_decoder_precision,
    add_decoding,
    add_device,
    add_model,
    layer_option,
    positive_int,
    run,
    say,
    transcribe_options,
)
from encoder.embedding import POOLINGS
from encoder.writers import FORMATS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m encoder.batch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, directories (searched recursively), glob patterns (quoted), or .jsonl "
                        "manifests (a \"file\" or \"path\" per line, and optionally an \"id\")")
    p.add_argument("--out", required=True, type=Path, help="the job's output directory (its ledger is there)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="model instances (Ray actors), each taking --batch-size inputs at a time (default 1)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="compute threads of each worker, and the CPUs it asks Ray for (default: this machine's "
                        "cores shared among the workers; with --ray-address, set it for the cluster's nodes)")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting Ray here")
    p.add_argument("--output-format", "-f", choices=FORMATS + ("all",), default="json",
                   help="transcribe: transcript format(s) (default json)")
    p.add_argument("--layer", type=layer_option, default=None,
                   help="embed: hidden state N, or 'all' (default: the final output)")
    p.add_argument("--pool", choices=POOLINGS, default="none", help="embed: average over frames (default none)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    add_model(p)
    add_device(p)
    add_decoder_precision(p)
    add_decoding(p, more_tasks=("embed",))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    task = "embed" if args.task == "embed" else "transcribe"
    if task == "embed":
        args.task = "transcribe"                    # the decoding options' task: unused
    job = Job(task, args.out, args.model, args.device, args.strict, args.decoder_precision,
              transcribe_options(args), args.output_format, args.layer, args.pool, threads)
    summary = run_archive(job, args.inputs, args.workers, args.ray_address, not args.quiet)
    say(summary.format())
    return 2 if summary.failed else 0


if __name__ == "__main__":
    run(main)
