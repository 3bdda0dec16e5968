# AdamW with linear warmup then cosine decay, counted in iterations. `train_cfg.max_epochs` is
# turned into iterations when the dataset is built (samples / (per-device batch x processes));
# `train_cfg.max_iters` overrides it. The two mmengine schedulers follow that length.
from torch.optim import AdamW

precision = "bf16"  # autocast dtype on a GPU; CPU runs always use fp32

optim_wrapper = dict(
    optimizer=dict(type=AdamW, lr=2e-5, betas=(0.9, 0.999), weight_decay=0.0),
    clip_grad=dict(max_norm=1.0, error_if_nonfinite=False),
    accumulative_counts=1,
)
lr_schedule = dict(warmup_ratio=0.03, min_lr_ratio=0.0)
train_cfg = dict(type="IterBasedTrainLoop", max_epochs=1)
