"""The Whisper decoder side: tokenizer, options, the ONNX Runtime session, decoding strategies with
temperature fallback, word timings, and the English normaliser of the word error rate.

decoder.onnx is built by weights_tools.onnx_decoder at conversion; the encoder package's
transcription loop (encoder/transcription.py) runs it window by window on the encoder's output.
"""
