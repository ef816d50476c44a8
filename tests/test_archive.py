"""Archive jobs (python -m encoder.batch, encoder/archive/): inputs, the ledger, the workers in this
process, and whole runs under an embedded Ray: the same transcripts and embeddings as the plain
commands, a rerun that skips what is done, a worker killed mid-run and an interrupted driver losing
nothing."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile

from decoder.options import TranscribeOptions
from encoder.archive.inputs import find_inputs
from encoder.archive.job import Item, Job
from encoder.archive.ledger import DONE, FAILED, LEDGER, Entry, Ledger, content_digest, input_key, options_key
from encoder.archive.worker import Reader, Worker
from kernels.errors import AmanuensisError
from weights_tools.safetensors_io import read_safetensors

ROOT = Path(__file__).resolve().parents[1]


# ---- inputs and the ledger ------------------------------------------------------------------------

def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_inputs_from_directories_manifests_and_globs(tmp_path):
    _touch(tmp_path / "calls" / "a.wav")
    _touch(tmp_path / "calls" / "2024" / "b.mp3")
    _touch(tmp_path / "calls" / "notes.txt")
    _touch(tmp_path / "loose" / "c.flac")
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"id": "first", "file": "loose/c.flac"}\n\n{"path": "elsewhere/d.ogg"}\n')
    found = find_inputs([str(tmp_path / "calls"), str(manifest), str(tmp_path / "loose" / "*.flac")])
    assert [(i.name, i.path.name) for i in found] == [("2024/b", "b.mp3"), ("a", "a.wav"), ("first", "c.flac"),
                                                        ("elsewhere/d", "d.ogg")]   # c.flac once: the first name


def test_inputs_that_name_nothing_or_clash_are_refused(tmp_path):
    with pytest.raises(AmanuensisError, match="no audio files"):
        find_inputs([str(tmp_path / "*.wav")])
    _touch(tmp_path / "x" / "same.wav")
    _touch(tmp_path / "y" / "same.wav")
    with pytest.raises(AmanuensisError, match="would both be written as same"):
        find_inputs([str(tmp_path / "x" / "same.wav"), str(tmp_path / "y" / "same.wav")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 3}\n')
    with pytest.raises(AmanuensisError, match="bad.jsonl:1"):
        find_inputs([str(bad)])
    escaping = tmp_path / "escaping.jsonl"
    escaping.write_text('{"file": "a.wav", "id": "../../etc/a"}\n')
    with pytest.raises(AmanuensisError, match="outside the output directory"):
        find_inputs([str(escaping)])
    absolute = tmp_path / "absolute.jsonl"
    absolute.write_text(json.dumps({"file": str(tmp_path / "x" / "same.wav")}) + "\n")
    assert [i.name for i in find_inputs([str(absolute)])] == ["same"]


def test_the_ledger_matches_content_options_and_outputs(tmp_path):
    audio, out = _touch(tmp_path / "a.wav"), tmp_path / "out"
    out.mkdir()
    content, stamp = Ledger(out).content("a", audio)
    key = input_key(content, options_key({"task": "transcribe"}))
    assert key != input_key(content, options_key({"task": "embed"}))
    ledger = Ledger(out)
    ledger.record(Entry("a", str(audio), key, DONE, ["transcripts/a.json"], content=content, stamp=stamp))
    assert not Ledger(out).is_done("a", key, out)               # its output is missing
    _touch(out / "transcripts" / "a.json")
    assert Ledger(out).is_done("a", key, out)
    audio.write_bytes(b"y")                                     # the same name, other content
    changed, _ = Ledger(out).content("a", audio)
    assert changed != content
    assert not Ledger(out).is_done("a", input_key(changed, options_key({"task": "transcribe"})), out)
    with open(out / LEDGER, "ab") as f:
        f.write('{"name": "a", "input": "é'.encode()[:-1])     # a line torn by a crash, mid-character
    assert Ledger(out).is_done("a", key, out)
    Ledger(out).record(Entry("a", str(audio), key, FAILED, reason="no"))
    assert not Ledger(out).is_done("a", key, out)               # the last line holds


def test_a_rerun_reads_only_the_files_that_changed(tmp_path, monkeypatch):
    """The ledger's digest serves while a file's size and modification time are those it was digested at."""
    from encoder.archive import ledger as ledger_module

    audio, out = _touch(tmp_path / "a.wav"), tmp_path / "out"
    out.mkdir()
    content, stamp = Ledger(out).content("a", audio)
    Ledger(out).record(Entry("a", str(audio), "k", DONE, content=content, stamp=stamp))
    read = []
    monkeypatch.setattr(ledger_module, "content_digest", lambda path: read.append(path) or "new")
    assert Ledger(out).content("a", audio) == (content, stamp) and not read
    os.utime(audio, ns=(stamp[1] + 10**9, stamp[1] + 10**9))       # touched: read again
    assert Ledger(out).content("a", audio)[0] == "new" and read == [audio]


def test_the_fingerprint_ignores_how_many_go_together():
    job = Job("transcribe", Path("o"), "tiny.en", "cpu", False, "int8", TranscribeOptions(batch_size=8))
    assert job.fingerprint() == replace(job, options=TranscribeOptions(batch_size=2)).fingerprint()
    assert job.fingerprint() != replace(job, options=TranscribeOptions(vad=True)).fingerprint()


def test_progress_shows_inputs_rate_and_time_left(tmp_path, monkeypatch, capsys):
    from encoder.archive import run as run_module

    monkeypatch.setattr(run_module.sys.stderr, "isatty", lambda: True)
    items = [Item(f"f{i}", tmp_path / f"f{i}.wav", "k", 600.0) for i in range(3)]
    shown = run_module._Progress(items, enabled=True)
    shown.update(items[0].done([], seconds=600.0))
    line = capsys.readouterr().err
    assert "1/3 inputs" in line and "audio hours per hour" in line and "min left" in line
    assert not run_module._Progress(items, enabled=False).enabled


class _FakeRay:
    """Enough of Ray for the scheduler: actors run their calls in order; one that runs an input named
    in `deadly` (every time) or in `once` (the first time) dies, and every call queued on it is lost
    too. Lost calls come back newest first. Only the first `room` actors made ever start (the others
    wait for room, as on a cluster that has lost a node)."""

    class exceptions:
        class RayError(Exception):
            pass

        class RayTaskError(RayError):
            pass

        class RayActorError(RayError):
            pass

    def __init__(self, deadly=("A",), once=(), room=None, start_error=None, all_at_once=False):
        self.outcome = {}                       # call -> entries (or a worker's description), or its error
        self.deadly, self.once, self.room, self.start_error = set(deadly), set(once), room, start_error
        self.all_at_once = all_at_once          # every call runs before any comes back (newest first)

    def _kills(self, call) -> bool:
        names = {item.name for item in call.items}
        if names & self.once:
            self.once -= names
            return True
        return bool(names & self.deadly)

    def wait(self, calls, num_returns, timeout=None):
        for call in calls:
            actor = call.actor
            if call in self.outcome or actor.dead:
                continue
            if call.items is None:              # a worker's describe call: it starts, if there is room
                if self.room is None or actor.number < self.room:
                    self.outcome[call] = self.start_error or "fake backends"
                    break
                continue
            if self._kills(call):
                actor.dead = True
                for other in actor.calls:
                    self.outcome.setdefault(other, self.exceptions.RayActorError("the actor died"))
            else:
                self.outcome[call] = [item.done([]) for item in call.items]
            if not self.all_at_once:
                break
        ready = [c for c in calls if c in self.outcome]
        assert ready or timeout is not None, "waiting forever"
        return ready[-num_returns:], []

    def kill(self, actor, no_restart):
        actor.dead = True
        for call in actor.calls:
            self.outcome.setdefault(call, self.exceptions.RayActorError("the actor was killed"))

    def get(self, call):
        result = self.outcome[call]
        if isinstance(result, Exception):
            raise result
        return result


class _FakeActor:
    made = 0

    def __init__(self):
        self.dead, self.calls, self.number = False, [], _FakeActor.made
        _FakeActor.made += 1
        self.run = self
        self.describe = type("Describe", (), {"remote": lambda _: self._call(None)})()

    def _call(self, items):
        return type("Call", (), {"actor": self, "items": items})()

    def remote(self, items, audio):
        call = self._call(items)
        self.calls.append(call)
        return call


def _schedule(fake_ray, workers: int, names: str, group: int, said: list | None = None):
    """Run inputs named by the letters of `names`, `group` to a call, on `workers` fake workers:
    (each input's entry, what was said, also into `said`)."""
    from collections import deque

    from encoder.archive import pipeline

    _FakeActor.made = 0
    items = [Item(name, Path(name), name, 0.0) for name in names]
    reader = type("Reader", (), {"read": type("R", (), {"remote": staticmethod(lambda paths: paths)})()})()
    ended, said = [], [] if said is None else said
    scheduler = pipeline._Scheduler(fake_ray, _FakeActor, [reader] * workers, ended.append, said.append, 1)
    scheduler.run(deque(pipeline._Group(tuple(items[i:i + group])) for i in range(0, len(items), group)))
    return ended, said


def test_a_worker_death_is_charged_to_the_inputs_it_was_running_only():
    from encoder.archive import pipeline

    ended, said = _schedule(_FakeRay(), 1, "ABCDEF", 2)
    status = {e.name: e.status for e in ended}
    assert status == {"A": FAILED, "B": DONE, "C": DONE, "D": DONE, "E": DONE, "F": DONE}, status
    assert len(ended) == 6 and sum("died" in s for s in said) == pipeline.RETRIES   # one replacement per death
    assert "died 2 times" in next(e.reason for e in ended if e.name == "A")
    assert said[0] == "worker 0: fake backends" and "worker 0 (a replacement): fake backends" in said


def test_the_call_that_ran_is_charged_with_a_death_even_when_its_loss_is_seen_first():
    """B finishes, then A kills the worker, and A's loss comes back before B's result: A is charged
    (it ran), B's result is kept, and A fails after RETRIES deaths, no more."""
    from encoder.archive import pipeline

    ended, said = _schedule(_FakeRay(all_at_once=True), 1, "BA", 1)
    assert {e.name: e.status for e in ended} == {"A": FAILED, "B": DONE}
    assert sum(" died (" in s for s in said) == pipeline.RETRIES, said


def test_the_other_workers_finish_the_job_when_the_cluster_has_no_room_for_a_replacement():
    """A node lost: its worker dies, and its replacement never starts; the job does not wait for it."""
    ended, said = _schedule(_FakeRay(deadly=(), once={"C"}, room=2), 2, "ABCDEFGH", 1)
    assert sorted(e.name for e in ended if e.status == DONE) == list("ABCDEFGH"), ended
    assert any("died" in s for s in said) and re.fullmatch(r"worker \d had not started when the work ran out",
                                                           said[-1]), said


def test_a_job_whose_workers_cannot_start_says_it_waits_for_room():
    from encoder.archive import pipeline

    said = []
    with pytest.raises(AssertionError, match="waiting forever"):      # the fake's stand-in for waiting
        _schedule(_FakeRay(deadly=(), room=0), 1, "AB", 1, said)
    assert said == [f"no worker has started in {pipeline.ROOM_WAIT_S:.0f} s: each is still loading the model, or "
                    "the cluster has no node with 1 CPU free for one; waiting"]


def test_workers_that_fail_to_start_are_retried_then_given_up_and_a_model_that_cannot_load_ends_the_job():
    from encoder.archive import pipeline

    said = []
    with pytest.raises(AmanuensisError, match="no worker is left to run the last 2 inputs"):
        _schedule(_FakeRay(deadly=(), start_error=_FakeRay.exceptions.RayActorError("its node died")), 1, "AB", 1,
                  said)
    assert sum("did not start" in s for s in said) == pipeline.RETRIES, said
    assert said[-1] == "worker 0 did not start 2 times (its node died); the job goes on without it"
    # as Ray 2.60 reports an error raised by an actor's __init__
    unloadable = _FakeRay.exceptions.RayActorError(
        "The actor died because of an error raised in its creation task, \x1b[36mray::Worker.__init__()\x1b[39m "
        "(pid=1)\n  File \"worker.py\", line 53, in __init__\nkernels.errors.AmanuensisError: model.bin: not a "
        "CTranslate2 model")
    unloadable.actor_init_failed = True
    with pytest.raises(AmanuensisError, match="^a worker cannot load the model: model.bin: not a CTranslate2 model$"):
        _schedule(_FakeRay(deadly=(), start_error=unloadable), 2, "AB", 1)


# ---- the worker, in this process ------------------------------------------------------------------

def _items(paths: list[Path]) -> list[Item]:
    return [Item(p.stem, p, input_key(content_digest(p), "k"), 0.0) for p in paths]


@pytest.mark.slow
def test_a_worker_transcribes_a_group_and_an_unreadable_file_fails_alone(tiny, speech, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEnot really")
    paths = [speech[0].path, broken, speech[1].path]
    job = Job("transcribe", tmp_path / "out", "tiny.en", "cpu", False, "fp32", TranscribeOptions(), threads=2)
    entries = Worker(job).run(_items(paths), Reader().read([str(p) for p in paths]))
    assert [e.status for e in entries] == [DONE, FAILED, DONE]
    assert "broken.wav" in entries[1].reason
    for entry, path in zip(entries[::2], paths[::2]):
        written = json.loads((job.out / entry.outputs[0]).read_text())
        assert written["text"] == tiny.transcribe(path).text
        assert entry.seconds == pytest.approx(soundfile.info(str(path)).duration, abs=0.05)


@pytest.mark.slow
def test_a_worker_embeds_a_group_into_one_shard(tiny, speech, tmp_path):
    paths = [clip.path for clip in speech[:3]]
    job = Job("embed", tmp_path / "out", "tiny.en", "cpu", False, "fp32", TranscribeOptions(), threads=2)
    items = _items(paths)
    entries = Worker(job).run(items, Reader().read([str(p) for p in paths]))
    assert len({e.outputs[0] for e in entries}) == 1
    shard = read_safetensors(job.out / entries[0].outputs[0])
    for item, entry in zip(items, entries):
        own = tiny.embed(item.path)
        assert entry.frames == own.frames and entry.tensor == item.key
        np.testing.assert_allclose(shard[item.key], own.states, atol=1e-5)


# ---- whole runs under Ray -------------------------------------------------------------------------

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install -e '.[cluster]')")


def _batch(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "encoder.batch", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, **kwargs)


def _latest(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / LEDGER).read_text().splitlines()]
    return {row["name"]: row for row in rows}


def _no_partials(out: Path) -> None:
    assert not list(out.rglob("*.partial")), list(out.rglob("*.partial"))


@pytest.fixture(scope="module")
def archive(speech, tmp_path_factory):
    """Six real clips and a file that is not audio, in a folder."""
    folder = tmp_path_factory.mktemp("archive")
    for clip in speech[:6]:
        (folder / clip.path.name).write_bytes(clip.path.read_bytes())
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEnot really")
    return folder


@pytest.mark.slow
@needs_ray
def test_two_workers_give_the_plain_commands_results_and_a_rerun_skips_them(archive, tmp_path):
    out = tmp_path / "job"
    run = _batch(archive, "--out", out, "--workers", "2", "--batch-size", "2", "--decoder-precision", "fp32")
    assert run.returncode == 2, run.stderr                          # one input failed
    assert "7 inputs: 6 done, 1 failed" in run.stderr and "failed broken: " in run.stderr
    assert run.stderr.count("worker ") >= 2 and "cpu" in run.stderr  # each worker's backends, said
    assert not _processes(b"raylet"), "Ray left running after the job"
    latest = _latest(out)
    assert latest["broken"]["status"] == FAILED and latest["broken"]["reason"]
    clips = _clips(archive)
    plain = subprocess.run([sys.executable, "-m", "encoder.transcribe", *clips, "-o", tmp_path / "plain", "-f", "json",
                            "--decoder-precision", "fp32"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert plain.returncode == 0, plain.stderr
    for clip in clips:
        ours = json.loads((out / "transcripts" / f"{clip.stem}.json").read_text())["text"]
        assert ours == json.loads((tmp_path / "plain" / f"{clip.stem}.json").read_text())["text"]
    again = _batch(archive, "--out", out, "--workers", "2", "--batch-size", "2", "--decoder-precision", "fp32")
    assert "7 inputs: 0 done, 1 failed, 6 done before" in again.stderr, again.stderr
    changed = _batch(archive, "--out", out, "--workers", "2", "--batch-size", "2")   # other options: all again
    assert "6 done, 1 failed, 0 done before" in changed.stderr, changed.stderr
    _no_partials(out)


@pytest.mark.slow
@needs_ray
def test_embeddings_are_sharded_with_an_index_equal_to_the_embed_command(archive, tmp_path):
    out, clips = tmp_path / "job", _clips(archive)
    run = _batch(*clips, "--out", out, "--task", "embed", "--workers", "2", "--batch-size", "2", "--pool", "mean")
    assert run.returncode == 0, run.stderr
    index = json.loads((out / "embeddings" / "index.json").read_text())
    assert index["meta"]["pool"] == "mean" and len(index["inputs"]) == len(clips)
    assert len({row["shard"] for row in index["inputs"]}) == 3      # two inputs to a call
    plain = tmp_path / "plain.safetensors"
    made = subprocess.run([sys.executable, "-m", "encoder.embed", *clips, "-o", plain, "--pool", "mean"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert made.returncode == 0, made.stderr
    expected = read_safetensors(plain)
    for row in index["inputs"]:
        states = read_safetensors(out / row["shard"])[row["tensor"]]
        np.testing.assert_allclose(states, expected[Path(row["input"]).name], atol=1e-5)


def _processes(marker: bytes) -> list[int]:
    """Processes whose command line holds `marker` (Linux)."""
    pids = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _clips(archive: Path) -> list[Path]:
    return sorted(p for p in archive.iterdir() if p.name != "broken.wav")


def _started(clips: list[Path], out: Path, batch_size: int, *options: str, env=None) -> subprocess.Popen:
    """A job on `clips`, running, once it has written its first ledger line."""
    proc = subprocess.Popen([sys.executable, "-m", "encoder.batch", *clips, "--out", out, "--batch-size",
                             str(batch_size), "--quiet", *options], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / LEDGER).exists() and (out / LEDGER).read_text().strip():
            return proc
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the job wrote no ledger line in time: {proc.communicate()[1]}")


def _outputs_exactly_once(out: Path, names: set[str]) -> None:
    latest = _latest(out)
    assert {n for n, row in latest.items() if row["status"] == DONE} == names
    assert sorted(p.stem for p in (out / "transcripts").iterdir()) == sorted(names)
    _no_partials(out)


@pytest.mark.slow
@needs_ray
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker's process in /proc (Linux)")
def test_a_worker_killed_mid_run_is_replaced_and_nothing_is_lost(archive, tmp_path):
    out, clips = tmp_path / "job", _clips(archive)
    proc = _started(clips, out, batch_size=2)
    victims = _processes(b"ray::Worker")
    assert victims, "no worker process found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "6 inputs: 6 done, 0 failed" in err and "died" in err, err       # said, not silent
    _outputs_exactly_once(out, {c.stem for c in clips})


@pytest.mark.slow
@needs_ray
def test_an_interrupted_driver_leaves_no_partial_output_and_the_rerun_finishes(archive, tmp_path):
    out, clips = tmp_path / "job", _clips(archive)
    proc = _started(clips, out, batch_size=1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    for written in (out / "transcripts").glob("*.json"):            # only whole outputs under their names
        json.loads(written.read_text())                             # (a worker stopped mid-write leaves a
    first = {n for n, row in _latest(out).items() if row["status"] == DONE}   # .partial; the rerun sweeps it)
    assert 1 <= len(first) < len(clips)
    again = _batch(*clips, "--out", out, "--batch-size", "1", "--quiet")
    assert again.returncode == 0, again.stderr
    assert f"6 inputs: {6 - len(first)} done, 0 failed, {len(first)} done before" in again.stderr, again.stderr
    _outputs_exactly_once(out, {c.stem for c in clips})


def test_bad_inputs_and_options_are_one_line_and_exit_2(tmp_path):
    missing = _batch(tmp_path / "nowhere", "--out", tmp_path / "job")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    assert "nowhere: no audio files" in missing.stderr and not (tmp_path / "job").exists()
    (tmp_path / "a.wav").write_bytes(b"x")
    bad = _batch(tmp_path / "a.wav", "--out", tmp_path / "job", "--workers", "0")
    assert bad.returncode == 2 and "--workers" in bad.stderr and "Traceback" not in bad.stderr


def test_two_jobs_in_one_directory_are_refused(tmp_path):
    import fcntl

    from encoder.archive.run import LOCK

    _touch(tmp_path / "a.wav")
    (tmp_path / "job").mkdir()
    with open(tmp_path / "job" / LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)             # as a running job holds it
        second = _batch(tmp_path / "a.wav", "--out", tmp_path / "job")
    assert second.returncode == 2 and "another archive job is running" in second.stderr, second.stderr


def _raylets() -> list[int]:
    """Ray's node managers running on this machine (Linux): one per node."""
    pids = []
    for pid in _processes(b"raylet"):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/raylet"):
                pids.append(pid)
        except OSError:
            pass
    return pids


@contextmanager
def _cluster(nodes: int):
    """A Ray cluster started apart on this machine: `nodes` nodes of 1 CPU each, each with its own
    raylet and object store, as on separate machines. Yields (its address, the environment that joins
    it, each node's raylet); stopped after."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    # token authentication is a property of the cluster, not of this job: off for this private one
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    head = ["--head", "--port", str(port), "--include-dashboard", "false"]
    raylets: list[int] = []
    try:
        for node in range(nodes):
            before = set(_raylets())
            where = head if node == 0 else ["--address", f"127.0.0.1:{port}"]
            started = subprocess.run([ray_cli, "start", *where, "--num-cpus", "1", "--object-store-memory",
                                      str(200 << 20)], capture_output=True, text=True, env=env, timeout=120)
            assert started.returncode == 0, started.stderr
            (raylet,) = set(_raylets()) - before
            raylets.append(raylet)
        yield f"127.0.0.1:{port}", env, raylets
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)


@pytest.mark.slow
@needs_ray
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's processes in /proc (Linux)")
def test_a_job_joins_a_running_cluster_and_leaves_it_running(archive, tmp_path):
    """--ray-address: the job joins a Ray cluster started apart (here two nodes on this machine), runs
    a worker on each node, and leaves the cluster as it found it."""
    with _cluster(2) as (address, env, _):
        out, clips = tmp_path / "job", _clips(archive)[:2]
        run = _batch(*clips, "--out", out, "--ray-address", address, "--workers", "2", "--threads", "1", env=env)
        assert run.returncode == 0, run.stderr
        assert "2 inputs: 2 done" in run.stderr
        nodes = set(re.findall(r"worker \d: on [^,]+, Ray node (\w+):", run.stderr))
        assert len(nodes) == 2, run.stderr                      # each worker on its own node, and says which
        assert len(_raylets()) == 2, "the cluster stopped with the job"


@pytest.mark.slow
@needs_ray
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's processes in /proc (Linux)")
def test_a_node_lost_mid_run_loses_nothing_and_the_nodes_left_finish_the_job(archive, tmp_path):
    """Two nodes of 1 CPU, a worker on each; the second node's raylet is killed once the job has
    written its first ledger line. Its worker dies, the cluster has no room for a replacement, and the
    worker on the first node finishes the job: every input done, exactly once, and the loss said."""
    with _cluster(2) as (address, env, raylets):
        out, clips = tmp_path / "job", _clips(archive)
        proc = _started(clips, out, 1, "--ray-address", address, "--workers", "2", "--threads", "1", env=env)
        os.kill(raylets[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "6 inputs: 6 done, 0 failed" in err, err
    assert re.search(r"worker \d (died|did not start)", err), err           # said, not silent
    _outputs_exactly_once(out, {c.stem for c in clips})


@pytest.mark.slow
@needs_ray
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's processes in /proc (Linux)")
def test_a_job_asking_more_workers_than_the_cluster_has_room_for_runs_on_those_it_can_place(archive, tmp_path):
    with _cluster(1) as (address, env, _):
        out, clips = tmp_path / "job", _clips(archive)[:2]
        run = _batch(*clips, "--out", out, "--ray-address", address, "--workers", "2", "--threads", "1", env=env)
    assert run.returncode == 0, run.stderr
    assert "2 inputs: 2 done" in run.stderr and "had not started when the work ran out" in run.stderr, run.stderr


@pytest.mark.slow
@needs_ray
def test_a_model_the_workers_cannot_load_ends_the_job_with_one_line(tmp_path):
    """Under Ray an error raised while a worker starts arrives as the actor's death: the job still
    names the error, once, and exits 2 (here: the npu device on a machine without an NPU)."""
    if Path("/dev/accel").exists():
        pytest.skip("this machine has an NPU device node")
    run = _batch(ROOT / "tests" / "data" / "hello.wav", "--out", tmp_path / "job", "--device", "npu")
    lines = [line for line in run.stderr.strip().splitlines() if not line.startswith("amanuensis: conver")]
    assert run.returncode == 2, run.stderr                   # (the model's first conversion may be said first)
    assert lines == ["error: a worker cannot load the model: device npu: no NPU device node (/dev/accel/accel*)"], \
        run.stderr
