"""Auto-tagging and upload screening: WD14-format ONNX taggers, an offline built-in tagger and moderation.

The library is usable on its own (see `engine.TaggingEngine` and the operator CLI,
`python -m services.tagger`); the gRPC service wraps it.
"""
