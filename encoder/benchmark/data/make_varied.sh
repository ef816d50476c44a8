#!/bin/sh
# Regenerates varied.ogg from varied.txt: five minutes of more varied speech than speech.ogg's twelve
# sentences (longer sentences, more words per second), synthesised here (never downloaded).
# Needs espeak-ng and sox (Debian packages).
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
espeak-ng -v en-us -s 150 -f varied.txt -w "$tmp/raw.wav"
sox "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$tmp/varied.wav"
sox "$tmp/varied.wav" -C 2 varied.ogg
