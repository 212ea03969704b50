"""The model: backbone families, tokenizer, checkpoints and decoding.

- :mod:`~univg.model.presets`: the family table (each preset's config values, each family's classes,
  coordinate frame and FSDP units);
- :mod:`~univg.model.backbone`: :class:`~univg.model.backbone.BackboneSpec`, what a YAML names,
  built from that table (LoRA, quantisation, gradient checkpointing);
- :mod:`~univg.model.tokenizer`: the exact Qwen2-VL tokenizer and processor, built offline;
- :mod:`~univg.model.checkpoints`: checkpoints checked before a run builds anything, and read;
- :mod:`~univg.model.checkpoint_io`: checkpoint and results files written whole or not at all;
- :mod:`~univg.model.consolidate`: sharded (FSDP2) checkpoints as single files;
- :mod:`~univg.model.run_config`: what a run was (its backbone, its row of the paper's tables),
  read from the config LightningCLI saved beside it;
- :mod:`~univg.model.decoding`: how evaluation decodes (greedy or the checkpoint's own config).
"""
