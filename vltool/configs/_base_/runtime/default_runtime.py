# Runtime shared by every recipe: logging, checkpoints, progress, seeds.
from mmengine.hooks import IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.visualization import LocalVisBackend, Visualizer

from vltool.engine.checkpoint import AtomicCheckpointHook, RngStateHook
from vltool.engine.hooks import AdapterExportHook, LossCurveHook, RichProgressHook, SupervisedTokensHook

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=AtomicCheckpointHook, by_epoch=False, interval=500, max_keep_ckpts=2),
)
custom_hooks = [
    dict(type=SupervisedTokensHook),
    dict(type=RichProgressHook),
    dict(type=LossCurveHook),
    dict(type=RngStateHook),
    dict(type=AdapterExportHook),
]
log_processor = dict(by_epoch=False, window_size=10)
visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend)])
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl"))
randomness = dict(seed=0, deterministic=False)
dataset_prepare_timeout = 1800  # seconds the other ranks wait while rank 0 tokenises
load_from = None
resume = False
