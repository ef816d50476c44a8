"""Archives: many audio files transcribed or embedded as one resumable job (python -m encoder.batch),
run by Ray: embedded in the process on one machine, or on a cluster."""
