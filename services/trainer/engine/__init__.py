"""Kiln's LoRA training engine: kohya sd-scripts semantics on diffusers + peft, no gRPC.

Entry points: ``trainer.train`` / ``trainer.estimate_training``, ``config.parse_config``,
``snapshot.load_snapshot``, ``catalog`` / ``model_store`` for base models, and the CLI in
``cli`` (``python -m services.trainer.engine``). See services/trainer/README.md.
"""
