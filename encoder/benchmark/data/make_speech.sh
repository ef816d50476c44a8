#!/bin/sh
# Regenerates speech.ogg + speech.json: the bench's input, synthesised here (never downloaded).
# Needs espeak-ng and sox (Debian packages). Each sentence is spoken by a different voice/speed,
# resampled to 16 kHz mono, and the sentences are joined with 0.4 s of silence; speech.json lists
# each sentence's text and sample range so the bench can reorder them into longer inputs.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
i=0
while IFS='|' read -r voice speed text; do
    espeak-ng -v "$voice" -s "$speed" -w "$tmp/raw.wav" "$text"
    sox "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$tmp/s$(printf %02d $i).wav" pad 0 0.4
    printf '%s\n' "$text" > "$tmp/s$(printf %02d $i).txt"
    i=$((i + 1))
done <<'LINES'
en-us|150|The weather station on the ridge reports light winds from the west and a clear sky until the evening.
en-gb|140|Please remember to back up the project folder before you install the new version of the tools.
en-us|165|Our team measured the encoder on two processor cores and compared every number in the same run.
en-gb|150|The library opens at nine in the morning and closes at six, except on public holidays.
en-us|140|A small boat drifted slowly across the harbour while the gulls circled above the fishing nets.
en-gb|160|If the meeting runs late, we will move the design review to Thursday afternoon instead.
en-us|150|She wrote the first draft in a single weekend and spent the next month cutting it in half.
en-gb|145|The train to the coast leaves from platform four and stops at every station along the river.
en-us|160|Speech recognition turns sound into text, one short window of audio after another.
en-gb|150|Keep the receipts in the blue folder, and send a copy of each one to the accounts office.
en-us|145|The garden needs water twice a week during the summer, and less once the rain returns.
en-gb|155|He checked the numbers again, found the mistake in the third column, and fixed the report.
LINES
sox "$tmp"/s*.wav -C 2 speech.ogg   # Vorbis: a quarter of FLAC's size; the bench only times what follows decoding
python3 - "$tmp" <<'PY'
import json, pathlib, subprocess, sys
tmp = pathlib.Path(sys.argv[1])
start, parts = 0, []
for wav in sorted(tmp.glob("s*.wav")):
    n = int(subprocess.check_output(["soxi", "-s", str(wav)]).decode())
    parts.append({"text": wav.with_suffix(".txt").read_text().strip(), "start": start, "end": start + n})
    start += n
json.dump({"sample_rate": 16000, "sentences": parts}, open("speech.json", "w"), indent=1)
PY
