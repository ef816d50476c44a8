"""The Whisper decoder side: tokenizer, ONNX Runtime session, decoding strategies, transcription.

decoder.onnx is built by weights_tools.onnx_decoder at conversion; `pipeline.Transcriber`
binds it to an encoder model (whose graph also computes the cross-attention K/V).
"""
