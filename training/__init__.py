"""Training ossai-demo: a tiny model with the gpt-oss architecture that speaks the harmony chat format.

- `training.data` / `training.tasks`: the synthetic conversations, rendered exactly as the runtime renders
  them, with the mask of what the model must produce.
- `training.model`, `training.train`, `training.export`, `training.package`: the model, the training loop,
  the checkpoint export and the bundled archive.
- `training.eval`: held-out prompts through the real ossai Engine and harmony parser.

Not part of the installed `ossai` package: run the modules from the repository root
(`python -m training.eval CHECKPOINT`).
"""
