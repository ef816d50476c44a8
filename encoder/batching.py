"""Several transcriptions at once: their windows decoded together.

Each transcription is a generator (a loop of encoder/transcription.py) that yields a DecodeAsk for
its next windows: each window's cross-attention K/V, or the function that encodes the window when
its batch binds it, and the decoding options.
run_together gathers the asks of every transcription, decodes those with the same options but for
their prompts as one batch of at most `batch_size` rows, each window with its own prompt (Whisper's
condition_on_previous_text: the file's text so far), and sends each transcription its results. A
window asked alone is decoded exactly as one transcription would decode it.
"""
from __future__ import annotations

import itertools
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from decoder.batch import decode_batch
from decoder.decoding import DecodingResult, Prompts, WindowDecoder
from decoder.options import DecodingOptions, TranscribeOptions
from decoder.session import DecoderSession
from kernels.errors import AmanuensisError


@dataclass
class DecodeAsk:
    kv: list                           # each window's cross-attention [K | V] per decoder layer, or a
                                       # function computing it (run when bound: one window's outputs alive)
    options: DecodingOptions           # for every window of the ask (the initial tokens included)
    rules: TranscribeOptions           # fallback ladder and thresholds
    prompts: Prompts = None            # each window's own prompt (None: options.prompt for every one)

    def __post_init__(self):
        if self.prompts is not None and len(self.prompts) != len(self.kv):
            raise ValueError(f"{len(self.prompts)} prompts for {len(self.kv)} windows")

    def window_prompts(self) -> list[tuple[int, ...]]:
        return list(self.prompts) if self.prompts is not None else [self.options.prompt] * len(self.kv)


# What a loop is sent back: for each window of its ask, its result and its bound cross-attention inputs; or
# the AmanuensisError that encoding one of its windows raised (thrown into the loop, which it ends).
Reply = list[tuple[DecodingResult, list]]
Loop = Generator[DecodeAsk, Reply, object]


def run_together(decoder: WindowDecoder, session: DecoderSession, loops: Iterable[Loop], batch_size: int,
                 active: int | None = None) -> Iterator[tuple[int, object]]:
    """Run `loops` to their ends, at most `active` (default batch_size) at a time, taking the next as
    one ends; yields (index in `loops`, what the loop returned, or the AmanuensisError that ended it)
    as each one finishes."""
    source = enumerate(loops)
    running: dict[int, Loop] = {}
    asks: dict[int, DecodeAsk] = {}
    todo: list[tuple[int, Reply | AmanuensisError | None]] = []  # loops to advance, with what they are sent

    def start_more():
        for i, loop in itertools.islice(source, max((active or batch_size) - len(running), 0)):
            running[i] = loop
            todo.append((i, None))

    start_more()
    while todo:
        while todo:                                 # advance every loop that has its answer
            i, reply = todo.pop(0)
            try:
                loop = running[i]
                asks[i] = loop.throw(reply) if isinstance(reply, AmanuensisError) else loop.send(reply)
                continue
            except StopIteration as done:
                result = done.value
            except AmanuensisError as e:
                result = e
            finally:
                reply = None                        # else it keeps the last batch's cross-attention buffers
            del running[i]
            yield i, result
            start_more()                            # a finished loop's place is taken at once
        todo = list(_answer(decoder, session, asks, batch_size).items())


def _answer(decoder: WindowDecoder, session: DecoderSession, asks: dict[int, DecodeAsk],
            batch_size: int) -> dict[int, Reply | AmanuensisError]:
    """Decode every ask, those with the same options together in batches of at most batch_size rows;
    empties `asks`. (A function of its own, so that nothing of a batch outlives its answers: a row's
    cross-attention inputs are views of the whole batch's buffers.)"""
    replies: dict[int, Reply] = {}
    groups: dict[tuple, list[int]] = {}
    for i, ask in asks.items():
        groups.setdefault((replace(ask.options, prompt=()), ask.rules), []).append(i)
    for (options, rules), members in groups.items():
        owners = [i for i in members for _ in asks[i].kv]
        prompts = [p for i in members for p in asks[i].window_prompts()]
        windows = []
        for i in members:                           # the asks let go of their windows: freed once bound
            windows += asks[i].kv
            asks.pop(i).kv.clear()
        for first in range(0, len(owners), batch_size):
            part = [windows.pop(0) for _ in owners[first:first + batch_size]]
            answers = _decode(decoder, session, part, options, rules, prompts[first:first + batch_size])
            for i, answer in zip(owners[first:first + batch_size], answers):
                replies.setdefault(i, []).append(answer)
    return {i: next((a for a in reply if isinstance(a, AmanuensisError)), reply) for i, reply in replies.items()}


def _decode(decoder: WindowDecoder, session: DecoderSession, kv: list, options: DecodingOptions,
            rules: TranscribeOptions, prompts: list[tuple[int, ...]]) -> list:
    """Decode the windows `kv`, each with its prompt (kv is emptied as windows are bound, so each encoder
    output is freed once copied). A window whose encoding raises an AmanuensisError is answered with it
    (its row decodes zeros, so the batch keeps its shape): the other windows' loops go on."""
    n, failed = len(kv), {}
    windows = (_computed(kv.pop(0), session, failed, j) for j in range(n))
    if n == 1:
        cross = session.bind_cross(next(windows))
        answers = [(decoder.decode_with_fallback(cross, replace(options, prompt=prompts[0]), rules), cross)]
    else:
        cross, rows = session.bind_cross_rows(windows, n)
        answers = list(zip(decode_batch(decoder, cross, options, rules, prompts), rows))
    return [failed.get(j, answer) for j, answer in enumerate(answers)]


def _computed(window, session: DecoderSession, failed: dict, j: int) -> list[np.ndarray]:
    """Window j's cross-attention [K | V] per decoder layer, encoding it if it is a function; zeros
    if that raises (the error kept in `failed`)."""
    if not callable(window):
        return window
    try:
        return window()
    except AmanuensisError as e:
        failed[j] = e
        d = session.dims
        return [np.zeros((d.n_audio_ctx, 2 * d.n_text_state), np.float32) for _ in range(d.n_text_layer)]
