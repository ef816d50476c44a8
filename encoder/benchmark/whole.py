"""Whole processes, as users run them: each system is a fresh `python` process per run, start-up,
model load and all; the systems alternate, and each figure is the median of the runs. A run's
peak resident memory is that child's own (encoder.benchmark.peak_rss), its text is scored against
the reference.

Inputs: five minutes of varied speech (data/varied.ogg, from varied.txt), a short clip (the
shortest bench sentence, ~4 s: start-up dominates), the twelve bench sentences as twelve files
in one command (many short files), and, when given, real clips (e.g. ../shared/speech) in one
command, where ours also runs with --batch-size 1 (file after file, each decoded alone: the
sequential path) and the transcripts of both are compared file by file.
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import soundfile

from encoder.benchmark import peak_rss, speech
from encoder.evaluation import score
from kernels import native

VARIED = "varied 5 min"
SHORT = "short clip"
FILES = "12 files"
CLIPS = "real clips"
OURS, OURS_VAD, OURS_SEQUENTIAL = "amanuensis", "amanuensis --vad True", "amanuensis --batch-size 1"
OURS_BF16, OURS_VAD_BF16 = "amanuensis --device cpu-bf16", "amanuensis --vad True --device cpu-bf16"
FW, FW_BATCHED = "faster-whisper int8", "faster-whisper int8 batched {}"
FW_BATCHES = (8, 16)

# faster-whisper as its README shows it, greedy, on every file of argv[2:]; one line of text per file
_FW_SCRIPT = """import sys
from faster_whisper import BatchedInferencePipeline, WhisperModel
model_dir, threads, batch, *files = sys.argv[1:]
model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=int(threads))
pipe = BatchedInferencePipeline(model) if int(batch) else model
extra = {"batch_size": int(batch)} if int(batch) else {}
for f in files:
    segments, _ = pipe.transcribe(f, beam_size=1, language="en", **extra)
    print(" ".join(s.text.strip() for s in segments))
"""


@dataclass(frozen=True)
class System:
    name: str
    argv: Callable[[list[str], Path], list[str]]            # (audio files, output directory) -> command
    texts: Callable[[list[str], Path, str], list[str]]      # (audio files, output directory, stdout) -> each one's
    inputs: frozenset[str] | None = None                    # the inputs it runs on (None: all)


@dataclass(frozen=True)
class Run:
    wall_s: float
    peak_rss_mb: float
    texts: list[str]            # one per file

    @property
    def text(self) -> str:
        return " ".join(self.texts)


def _ours(model: str, name: str = OURS, extra: tuple[str, ...] = (), inputs: frozenset[str] | None = None) -> System:
    def argv(files, out):
        return [sys.executable, "-m", "encoder.transcribe", *files, "--model", model, "-o", str(out), "-f", "txt",
                "--verbose", "False", *extra]

    def texts(files, out, _stdout):
        return [(out / f"{Path(f).stem}.txt").read_text().strip() for f in files]

    return System(name, argv, texts, inputs)


def _faster_whisper(model_dir: str, threads: int, batch: int) -> System:
    def argv(files, _out):
        return [sys.executable, "-c", _FW_SCRIPT, model_dir, str(threads), str(batch), *files]

    return System(FW_BATCHED.format(batch) if batch else FW, argv,
                  lambda _f, _o, stdout: [" ".join(line.split()) for line in stdout.splitlines()])


def systems(model: str, model_dir: str | None, threads: int) -> list[System]:
    """Ours on `model` (default options, --vad, and on the real clips --batch-size 1; where cpu-bf16 runs,
    the first two with --device cpu-bf16 on the varied speech and the clips), and faster-whisper plain and
    batched where it is installed and the model is a CTranslate2 directory (`model_dir`, else None)."""
    ours = [_ours(model), _ours(model, OURS_VAD, ("--vad", "True")),
            _ours(model, OURS_SEQUENTIAL, ("--batch-size", "1"), frozenset({CLIPS}))]
    if native.BF16 is not None:
        ours += [_ours(model, OURS_BF16, ("--device", "cpu-bf16"), frozenset({VARIED, CLIPS})),
                 _ours(model, OURS_VAD_BF16, ("--vad", "True", "--device", "cpu-bf16"), frozenset({VARIED, CLIPS}))]
    if model_dir is None or importlib.util.find_spec("faster_whisper") is None:
        return ours
    return ours + [_faster_whisper(model_dir, threads, b) for b in (0, *FW_BATCHES)]


def write_inputs(tmp: Path, clips: list | None = None) -> dict[str, tuple[list[str], str]]:
    """{input name: (audio files, reference text)} written under `tmp`; `clips` (encoder.evaluation.Clip)
    are read where they are."""
    varied = tmp / "varied.wav"
    audio, rate = soundfile.read(speech.DATA / "varied.ogg", dtype="int16")
    soundfile.write(varied, audio, rate, "PCM_16")
    short = tmp / "short.wav"
    samples, short_text = min(speech.sentences(), key=lambda s: len(s[0]))
    soundfile.write(short, samples, speech.SAMPLE_RATE, "PCM_16")
    files = []
    for i, (samples, _text) in enumerate(speech.sentences()):
        files.append(str(tmp / f"sentence-{i:02d}.wav"))
        soundfile.write(files[-1], samples, speech.SAMPLE_RATE, "PCM_16")
    inputs = {VARIED: ([str(varied)], (speech.DATA / "varied.txt").read_text()),
              SHORT: ([str(short)], short_text),
              FILES: (files, " ".join(t for _, t in speech.sentences()))}
    if clips:
        inputs[CLIPS] = ([str(c.path) for c in clips], " ".join(c.text for c in clips))
    return inputs


def run_once(system: System, files: list[str], out: Path, env: dict) -> Run:
    """One whole process of `system` on `files`: its wall time, its own peak RSS and its text."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stdout", "w+") as stdout, open(out / "stderr", "w+") as stderr:
        code = subprocess.call(peak_rss.launched(system.argv(files, out), out / "usage.json"), stdout=stdout,
                               stderr=stderr, env=env)
        stdout.seek(0), stderr.seek(0)
        if code != 0:
            raise RuntimeError(f"{system.name}: exit status {code}: {stderr.read().strip()[-300:]}")
        usage = peak_rss.read(out / "usage.json")
        return Run(usage.wall_s, usage.peak_rss_mb, system.texts(files, out, stdout.read()))


def measure(systems_: list[System], inputs: dict[str, tuple[list[str], str]], repeats: int, threads: int,
            tmp: Path, say=print) -> dict:
    """{input: {system: figures}}: each system on each input `repeats` times, alternating."""
    env = {**os.environ, "AMANUENSIS_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    result = {}
    for name, (files, reference) in inputs.items():
        runs: dict[str, list[Run]] = {s.name: [] for s in systems_}
        errors = {}
        for i in range(repeats):
            for system in systems_:
                if system.name in errors or (system.inputs is not None and name not in system.inputs):
                    continue
                say(f"whole process: {system.name} on {name} ({i + 1}/{repeats}) ...")
                try:
                    runs[system.name].append(run_once(system, files, tmp / f"out-{len(result)}-{system.name}", env))
                except RuntimeError as e:
                    errors[system.name] = str(e)
        result[name] = {s: _figures(r, reference) if r else {"error": errors[s]} for s, r in runs.items()
                        if r or s in errors}
        if runs.get(OURS) and runs.get(OURS_SEQUENTIAL):
            result[name][OURS]["same_texts_as_sequential"] = sum(
                a == b for a, b in zip(runs[OURS][-1].texts, runs[OURS_SEQUENTIAL][-1].texts))
            result[name][OURS]["files"] = len(files)
    return result


def _figures(runs: list[Run], reference: str) -> dict:
    return {"wall_s": round(statistics.median(r.wall_s for r in runs), 2),
            "runs_s": sorted(round(r.wall_s, 2) for r in runs),
            "peak_rss_mb": round(statistics.median(r.peak_rss_mb for r in runs), 1),
            "wer": round(score(reference, runs[-1].text).wer, 4)}


def speedups(whole: dict, base: str = FW) -> dict[str, dict[str, float]]:
    """{input: {system: base's wall time / the system's}} where both ran."""
    out = {}
    for name, figures in whole.items():
        ref = figures.get(base, {}).get("wall_s")
        out[name] = {s: round(ref / f["wall_s"], 2) for s, f in figures.items() if ref and f.get("wall_s")}
    return out
