"""What an archive job does (Job: task, model, options, where its outputs go) and what it works on
(Item: an input with its key), shared by the driver and the workers."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from decoder.options import TranscribeOptions
from encoder.archive.ledger import DONE, FAILED, Entry

TRANSCRIPTS, EMBEDDINGS = "transcripts", "embeddings"      # the job directory's folders of outputs


@dataclass(frozen=True)
class Job:
    task: str                           # "transcribe" (translate too, by options.decoding.task) or "embed"
    out: Path                           # the job directory: ledger, transcripts/, embeddings/
    model: str                          # as load_model takes it
    device: str
    strict: bool
    decoder_precision: str
    options: TranscribeOptions          # transcribe: decoding; its batch_size is also the files a worker takes at once
    output_format: str = "json"         # transcribe: one of encoder.writers.FORMATS, or "all"
    layer: int | str | None = None      # embed: as WhisperModel.embed takes it
    pool: str = "none"                  # embed
    threads: int = 1                    # compute threads of each worker

    def fingerprint(self) -> dict:
        """What decides the outputs: a change of any of it makes every input be done again."""
        common = {"task": self.task, "model": self.model, "device": self.device}
        if self.task == "embed":
            return {**common, "layer": self.layer, "pool": self.pool}
        options = asdict(self.options)
        # how many go together is chosen for speed (batched int8 products can change a close call,
        # docs/performance.md, but a rerun with another batch size need not redo the archive)
        options.pop("batch_size")
        return {**common, "decoder_precision": self.decoder_precision, "options": options,
                "output_format": self.output_format}


@dataclass(frozen=True)
class Item:
    name: str                           # encoder.archive.inputs.Input.name
    path: Path
    key: str                            # encoder.archive.ledger.input_key
    seconds: float                      # duration from the file's header (0 if unknown), for progress
    content: str = ""                   # encoder.archive.ledger.content_digest
    stamp: tuple[int, ...] = ()         # encoder.archive.ledger.file_stamp when digested

    def done(self, outputs: list[str], **more) -> Entry:
        return Entry(self.name, str(self.path), self.key, DONE, outputs, content=self.content,
                     stamp=list(self.stamp), **more)

    def failed(self, reason: str) -> Entry:
        return Entry(self.name, str(self.path), self.key, FAILED, reason=reason, content=self.content,
                     stamp=list(self.stamp))
