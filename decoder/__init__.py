"""ONNX Runtime Whisper decoder (not yet built: see the decoder issue).

The converted model directory already carries the decoder weights
(`decoder.safetensors`) and `tokenizer.json` it will consume.
"""
