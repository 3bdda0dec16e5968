# LLaVA-1.5 stage 2 for Qwen2.5-0.5B-Instruct + SigLIP-so400m/14-384: QLoRA: the LLM in 4-bit NF4 + LoRA (r=64), projector trained; lr 2e-4.
# LLaVA-Instruct mix665k, one epoch at a global batch of 128 (8 GPUs x 16) = 5200 iterations.
# Start from the stage-1 projector: set load_from to the pretrain run's checkpoint, e.g.
#   --cfg-options load_from=work_dirs/qwen2_5_0_5b_siglip_so400m_p14_384_pretrain/iter_2180.pth
from mmengine.config import read_base

with read_base():
    from .._base_.encoders.siglip_so400m_p14_384 import *  # noqa: F403
    from .._base_.llms.qwen2_5_0_5b_instruct import *  # noqa: F403
    from .._base_.projectors.mlp2x_gelu import *  # noqa: F403
    from .._base_.runtime.default_runtime import *  # noqa: F403
    from .._base_.schedules.cosine_iter import *  # noqa: F403
    from .._base_.datasets.llava_finetune import *  # noqa: F403
    from .._base_.llms.qlora_4bit import *  # noqa: F403

model = dict(
    vision_encoder=vision_encoder,
    projector=projector,
    llm=dict(**llm, **llm_quantization),
    llm_lora=llm_lora,
    freeze_vision_encoder=True,
    freeze_projector=False,
    freeze_llm=True,
)
optim_wrapper.optimizer.update(lr=2e-4)
train_cfg.update(max_iters=5200)
default_hooks.checkpoint.update(interval=1000)
