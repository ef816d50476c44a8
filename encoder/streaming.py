"""Live transcription: audio arrives in chunks, text is committed once two hypotheses agree on it.

The LocalAgreement-2 policy of whisper_streaming: after every `chunk_seconds` of new audio, the
buffer (the audio since the last trim) is transcribed again with word timestamps, prompted with the
committed text before the buffer, with Whisper's temperature fallback. The words past what is
committed form the hypothesis; the longest prefix the last two hypotheses share is committed, and
so is every word up to a run of RUN_WORDS words both share at most one word apart (one disputed
word, often a name, would otherwise hold back the agreed words after it for several updates), and
every word that ended MAX_DELAY_SECONDS before the audio received (updates far apart agree less
often). Once the buffer is longer than `trim_seconds` it is cut at the end of the last
segment whose words are all committed, so each update's work stays bounded. What the latest
hypothesis adds beyond the committed words is the partial text. While the buffer only grows, the
last transcription's tokens are the draft of the next (DecodingOptions.draft): greedy decoding
checks them in one decoder step instead of one step per token.

A voice activity gate (Silero VAD) keeps silence from being transcribed: when the audio past the
committed words has no speech, an update costs one VAD pass and produces nothing.

    live = LiveTranscriber(model)
    for update in live.feed(samples): ...       # any number of 16 kHz float32 samples at a time
    last = live.finish()                        # commits what the last hypothesis holds

A caller whose updates can fall behind the audio (a server with several streams) appends instead
and steps when it can: one update then covers all the audio that arrived meanwhile, so a stream
catches up instead of queueing work.

    live.append(samples)
    if live.ready: update = live.step()

Memory stays bounded over hours: the buffer is trimmed, and only the committed words near it are
kept as Words (the text of the others is kept as text).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from decoder.normalize import normalize
from decoder.options import TranscribeOptions
from encoder.results import Word
from encoder.vad import SileroVad, VadOptions
from kernels.errors import BadOption
from kernels.frontend import SAMPLE_RATE

CHUNK_SECONDS = 1.0          # new audio between updates
TRIM_SECONDS = 15.0          # the buffer is cut at a committed segment end beyond this
PROMPT_CHARS = 200           # committed text carried into the prompt
MAX_DELAY_SECONDS = 8.0      # a word this far behind the audio received is committed without agreement
RUN_WORDS = 3                # a run of words two hypotheses share commits the words before it too
OVERLAP_WORDS = 5            # longest run of words a hypothesis may repeat from the committed tail
BACKOFF_SECONDS = 0.5        # the speech gate looks this far before the committed end ...
CONTINUE_SECONDS = 0.3       # ... and takes speech running this far past it as a word not committed


@dataclass(frozen=True)
class Update:
    committed: list[Word]        # words committed by this update, times in seconds of the stream
    partial: str                 # the latest hypothesis past the committed words
    received: float              # seconds of audio received when this update was made
    work_seconds: float          # wall time this update's transcription took (0 when gated)


@dataclass
class _Buffer:
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    start: float = 0.0           # stream time of samples[0]
    pending: int = 0             # samples received since the last update

    @property
    def end(self) -> float:
        return self.start + len(self.samples) / SAMPLE_RATE


def _key(word: Word) -> str:
    return normalize(word.word)


class LiveTranscriber:
    """Transcribes a stream incrementally with a model's `transcribe` (see the module docstring)."""

    def __init__(self, model, options: TranscribeOptions | None = None, chunk_seconds: float = CHUNK_SECONDS,
                 trim_seconds: float = TRIM_SECONDS, vad: SileroVad | None = None):
        if not chunk_seconds > 0 or not trim_seconds >= chunk_seconds:
            raise BadOption("chunk_seconds", f"live chunks of {chunk_seconds} s trimmed beyond {trim_seconds} s: "
                            "the chunk must be positive and no longer than the trim length")
        self.model, self.chunk_seconds, self.trim_seconds = model, chunk_seconds, trim_seconds
        # the temperature ladder stays: a decoding that fails Whisper's checks can fail the same way
        # on every later update (measured on the real clips: same WER and work as one attempt)
        self.options = options or TranscribeOptions()
        self.vad = vad or SileroVad()
        self.buffer = _Buffer()
        self.committed: list[Word] = []          # the committed words from the buffer's start on (and a few before)
        self._said: list[str] = []               # the text of every committed word
        self.hypothesis: list[Word] = []
        self.segment_ends: list[float] = []      # stream times where the last transcription's segments end
        self._draft: tuple[int, ...] = ()        # the last transcription's first window, as tokens ...
        self._draft_start: float | None = None   # ... of the buffer starting here

    @property
    def committed_end(self) -> float:
        return self.committed[-1].end if self.committed else self.buffer.start

    @property
    def text(self) -> str:
        """Everything committed."""
        return "".join(self._said).strip()

    @property
    def ready(self) -> bool:
        """Whether at least `chunk_seconds` of audio arrived since the last update."""
        return self.buffer.pending >= self.chunk_samples

    @property
    def chunk_samples(self) -> int:
        """The new audio an update waits for, in samples."""
        return round(self.chunk_seconds * SAMPLE_RATE)

    def append(self, samples) -> None:
        """Add samples (16 kHz mono float32) without transcribing."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        self.buffer.samples = np.concatenate([self.buffer.samples, samples])
        self.buffer.pending += len(samples)

    def step(self) -> Update:
        """One update over the buffer, however much audio arrived since the last."""
        self.buffer.pending = 0
        return self._update()

    def feed(self, samples) -> list[Update]:
        """Append samples (16 kHz mono float32); one Update per `chunk_seconds` of them."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        updates = []
        while len(samples):
            take = min(len(samples), self.chunk_samples - self.buffer.pending)
            self.append(samples[:take])
            samples = samples[take:]
            if self.ready:
                updates.append(self.step())
        return updates

    def finish(self) -> Update:
        """The last update: the buffer transcribed once more and every word of it committed."""
        update = self._update(final=True)
        self.buffer = _Buffer(start=self.buffer.end)
        return update

    def _update(self, final: bool = False) -> Update:
        received = self.buffer.end
        if not self._has_speech():
            self._drop_silence()
            return Update([], "", received, 0.0)
        start = time.perf_counter()
        words = self._transcribe()
        work = time.perf_counter() - start
        agreed = words if final else self._agreed(words, received)
        self.committed += agreed
        self._said += [w.word for w in agreed]
        self.hypothesis = words[len(agreed):]
        self._trim()
        return Update(agreed, "".join(w.word for w in self.hypothesis).strip(), received, work)

    def _has_speech(self) -> bool:
        """Whether the buffer holds speech past the committed words; once everything said is committed,
        silence costs one VAD pass and no transcription.

        A committed word's end time can fall a few hundred ms before or after the sound ends, so the
        audio is looked at from BACKOFF_SECONDS before the committed end, and a run of speech there
        that stops by CONTINUE_SECONDS after that end is the committed word's own tail."""
        back = self.committed_end > self.buffer.start            # a committed word ends inside the buffer
        tail = max(0, round((self.committed_end - BACKOFF_SECONDS - self.buffer.start) * SAMPLE_RATE))
        audio = self.buffer.samples[tail:]
        if len(audio) == 0:
            return False
        speech = self.vad.scores(lambda s, n: audio[max(s, 0):s + n]).probs >= VadOptions.threshold
        if not back:
            return bool(speech.any())
        frame_seconds = len(audio) / SAMPLE_RATE / len(speech)
        end = (self.committed_end - self.buffer.start - tail / SAMPLE_RATE) / frame_seconds   # in frames
        heard = np.flatnonzero(speech)
        if len(heard) == 0 or heard[0] > end:
            return len(heard) > 0
        run = speech[heard[0]:]                                   # the first run: the committed word's tail
        stop = heard[0] + (int(np.argmin(run)) if not run.all() else len(run))
        return stop > end + CONTINUE_SECONDS / frame_seconds or bool(speech[stop:].any())

    def _drop_silence(self) -> None:
        """A buffer whose uncommitted audio has no speech is dropped but for its last chunk (a word
        may be starting); the committed words stay committed."""
        keep = round(self.chunk_seconds * SAMPLE_RATE)
        if len(self.buffer.samples) > keep:
            self.buffer.start = self.buffer.end - keep / SAMPLE_RATE
            self.buffer.samples = self.buffer.samples[-keep:]
            self._forget_before_buffer()
        self.hypothesis = []

    def _transcribe(self) -> list[Word]:
        """The buffer's words past the committed ones, in stream time."""
        # the prompt is the committed text before the buffer: text the buffer still holds is heard again
        # (a word is before the buffer when most of it is: a cut falls at a segment end, which can be a
        # little before the end time of the segment's last word)
        inside = sum(w.start + w.end > 2 * self.buffer.start for w in self.committed)
        before = self._said[max(0, len(self._said) - inside - PROMPT_CHARS // 2):len(self._said) - inside]
        prompt = "".join(before).strip()[-PROMPT_CHARS:] or None
        # the buffer has grown at its end since the last transcription: that one's tokens are checked in one
        # decoder step, and greedy decoding goes on from where they part (a cut buffer starts anew)
        draft = self._draft if self._draft_start == self.buffer.start else ()
        result = self.model.transcribe(self.buffer.samples, self.options, word_timestamps=True,
                                       initial_prompt=prompt, vad=False, draft=draft)
        self._draft, self._draft_start = result.decoded.get(0, ()), self.buffer.start
        offset = self.buffer.start
        self.segment_ends = [offset + s.end for s in result.segments]
        words = [Word(w.word, offset + w.start, offset + w.end, w.probability)
                 for s in result.segments for w in s.words or []]
        new = [w for w in words if (w.start + w.end) / 2 > self.committed_end]
        return self._without_repeat(new)

    def _without_repeat(self, words: list[Word]) -> list[Word]:
        """`words` without a leading run that repeats the committed tail (a word straddling the cut)."""
        tail = [_key(w) for w in self.committed[-OVERLAP_WORDS:]]
        for n in range(min(len(tail), len(words)), 0, -1):
            if tail[-n:] == [_key(w) for w in words[:n]]:
                return words[n:]
        return words

    def _agreed(self, words: list[Word], received: float) -> list[Word]:
        """The words of `words` the previous hypothesis agrees on (agreed_words), or, if longer, the words
        that ended MAX_DELAY_SECONDS or more before the audio received: when updates come seconds
        apart (a busy server) hypotheses agree less often, and a word heard with that much audio after
        it is as good as it gets. This bounds the buffer, hence each update's work, under load."""
        n = agreed_words([_key(w) for w in words], [_key(w) for w in self.hypothesis])
        old = 0
        while old < len(words) and words[old].end <= received - MAX_DELAY_SECONDS:
            old += 1
        return words[:max(n, old)]

    def _trim(self) -> None:
        """Cut the buffer at the last segment end the committed words cover, once it is long."""
        if self.buffer.end - self.buffer.start <= self.trim_seconds:
            return
        cuts = [t for t in self.segment_ends if self.buffer.start < t <= self.committed_end + 1e-3]
        if not cuts and self.buffer.end - self.buffer.start > 2 * self.trim_seconds:
            cuts = [self.committed_end]        # one long segment: cut after its last committed word
        if not cuts or cuts[-1] <= self.buffer.start:
            return
        drop = round((cuts[-1] - self.buffer.start) * SAMPLE_RATE)
        self.buffer.samples = self.buffer.samples[drop:]
        self.buffer.start += drop / SAMPLE_RATE
        self._forget_before_buffer()

    def _forget_before_buffer(self) -> None:
        """Committed words before the buffer are kept as text only (but for the tail a repeat is
        matched against)."""
        before = sum(w.end <= self.buffer.start + 1e-3 for w in self.committed)
        del self.committed[:max(0, before - OVERLAP_WORDS)]


def agreed_words(new: list[str], old: list[str]) -> int:
    """How many of the newer hypothesis' words count as agreed with the older one's: their common
    prefix, or, if longer, the words up to the end of the last run of RUN_WORDS words that the older
    one holds too, at most one word earlier or later. The words before such a run are the newer
    hypothesis' (it heard more context); without the shift limit a repeated phrase could match far away."""
    prefix = 0
    while prefix < min(len(new), len(old)) and new[prefix] == old[prefix]:
        prefix += 1
    for end in range(len(new), prefix + RUN_WORDS - 1, -1):            # end: one past the run's last word
        run = new[end - RUN_WORDS:end]
        if any(RUN_WORDS <= end + shift <= len(old) and old[end + shift - RUN_WORDS:end + shift] == run
               for shift in (-1, 0, 1)):
            return end
    return prefix


@dataclass(frozen=True)
class Replay:
    text: str                    # everything committed
    latencies: list[float]       # per committed word: seconds from its end in the audio to its commit
    delays: list[float]          # the same without the work: audio received after the word's end
    work_seconds: float          # transcription time over the whole stream
    seconds: float               # audio length


def replay(live: LiveTranscriber, samples: np.ndarray, step_seconds: float = 0.1) -> Replay:
    """Feed `samples` in steps of `step_seconds` as fast as they are taken, then finish. A word's
    latency is what it would be in real time with the work done as each update comes: the audio
    received after the word ended, plus the committing update's work."""
    step, delays, latencies, work = round(step_seconds * SAMPLE_RATE), [], [], 0.0
    updates = [u for i in range(0, len(samples), step) for u in live.feed(samples[i:i + step])]
    for update in updates + [live.finish()]:
        work += update.work_seconds
        delays += [update.received - w.end for w in update.committed]
        latencies += [update.received - w.end + update.work_seconds for w in update.committed]
    return Replay(live.text, latencies, delays, work, len(samples) / SAMPLE_RATE)
