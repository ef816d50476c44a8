"""Whisper weights in: read Hugging Face and CTranslate2 checkpoints, convert to the kernel layout.

Entry points: `python -m weights_tools convert SOURCE --out DIR`,
`resolve.resolve_model(spec)` and `model_dir.ConvertedModel.open(path)`.
"""
