"""Settings of the tiny CPU runs the engine tests share (4 demo scenes of 64 px, small widths)."""

SMALL_MODEL = [
    "model.arch=resnet18",
    "model.aspp_channels=32",
    "model.decoder_channels=32",
    "model.low_level_channels=8",
]
# 4 demo scenes of 64 px: 2 train (8 patches of 32 px), 1 val, 1 test
TINY_FINETUNE = [
    "run.progress=false",
    "run.log_every=1",
    "data.demo.n_scenes=4",
    "data.demo.size=64",
    "data.patch_size=32",
    "data.label_fraction=1.0",
    "train.batch_size=4",
    "train.num_workers=0",
    "train.max_steps=2",
    "eval.window=32",
    "eval.stride=24",
    "eval.overlays=1",
    "optim.lr=0.01",
    "train.amp=off",  # fp32 whatever the CPU (auto is bf16 where the CPU has native bf16)
    *SMALL_MODEL,
]
# a 2-step GLCNet pretraining on 4 demo scenes of 64 px (the start of the fine-tuning tests)
TINY_PRETRAIN = [
    "run.name=tiny", "run.progress=false", "run.image_every=0", "train.max_steps=2",
    "train.batch_size=4", "train.num_workers=0", "data.demo.n_scenes=4", "data.demo.size=64",
    "data.patch_size=48", "views.size=32", "method.region_size=8", "train.amp=off", *SMALL_MODEL,
]  # fmt: skip


def pretrain_tiny(root):
    """The checkpoint of a :data:`TINY_PRETRAIN` run under ``root``."""
    from contrastseg.config import load_pretrain_config
    from contrastseg.train.pretrain import run_pretrain

    return run_pretrain(load_pretrain_config(None, [f"run.root={root}", *TINY_PRETRAIN])).checkpoint
