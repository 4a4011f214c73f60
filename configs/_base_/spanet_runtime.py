# spanet_mm's run policy, inherited by every config of the project. Because it lives in the
# configs (not in tools/train.py), a config behaves the same under the project's tools and under
# mmdet's, mmseg's or mmpretrain's own tools/train.py and tools/test.py.
# A config that sets `custom_hooks` replaces this list (mmengine merges dicts, not lists), so
# one that adds a hook lists these three again before its own.
custom_imports = dict(imports=['spanet_mm'], allow_failed_imports=False)
custom_hooks = [
    # Exact resume: the RNG states go into every checkpoint and come back on --resume.
    dict(type='RNGStateHook'),
    # A checkpoint that does not fit the model (another arch or model, an unconverted
    # official file) is refused instead of leaving layers at their random initialisation.
    dict(type='CheckpointCheckHook'),
    # Checkpoints rotated out (max_keep_ckpts, the previous best) are deleted only after the
    # new one is complete (mmengine deletes first), so a kill or a full disk during a write
    # never leaves a run without a checkpoint. The writes themselves are atomic
    # (spanet_mm.engine.AtomicLocalBackend, installed by `import spanet_mm`).
    dict(type='DeferredCheckpointRemovalHook'),
]
