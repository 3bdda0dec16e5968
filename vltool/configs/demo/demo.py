# The CPU demo: a tiny VLM learns coloured shapes from random weights in a few minutes.
# `vltool train demo` writes the synthetic data on first use, trains, then answers held-out
# MMBench-style questions. Point it at your own data with
# --cfg-options train_dataloader.dataset.data_path=FILE train_dataloader.dataset.image_folder=DIR
from mmengine.config import read_base
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

from vltool.data.collate import pad_collate
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.demo_task import write_demo_dataset
from vltool.data.sampler import LengthGroupedSampler
from vltool.engine.hooks import MultipleChoiceEvalHook, SampleAnswersHook
from vltool.model.projectors import MLPProjector
from vltool.model.tokenizer import load_qwen2_tokenizer
from vltool.model.vision_encoder import VisionEncoder

with read_base():
    from .._base_.runtime.default_runtime import *  # noqa: F403
    from .._base_.schedules.cosine_iter import *  # noqa: F403

# ---------------- settings ----------------
data_root = "data/vltool_demo"
image_size = 64
batch_size = 32
max_iters = 700
lr = 1e-3
seed = 1

# ---------------- model ----------------
template = "qwen_chat"
tokenizer = dict(type=load_qwen2_tokenizer)
# the PIL class by name: the same pixels whether or not torchvision is installed
image_processor = dict(
    type=CLIPImageProcessorPil, size=dict(shortest_edge=image_size), crop_size=dict(height=image_size, width=image_size)
)
model = dict(
    vision_encoder=dict(
        type=VisionEncoder,
        model=dict(
            type=CLIPVisionModel,
            config=dict(
                type=CLIPVisionConfig,
                image_size=image_size,
                patch_size=8,
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=4,
            ),
        ),
        feature_layer=-1,
        select_strategy="default",
    ),
    projector=dict(type=MLPProjector, depth=2),
    llm=dict(
        type=Qwen2ForCausalLM,
        config=dict(
            type=Qwen2Config,
            vocab_size=151936,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        ),
    ),
    freeze_vision_encoder=False,
    freeze_projector=False,
    freeze_llm=False,
    # the 152k-row input table stays random: its dense gradient would cost a third of each step
    freeze_llm_input_embeddings=True,
)

# ---------------- data ----------------
data_preparation = dict(type=write_demo_dataset, data_root=data_root, image_size=image_size)
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    dataset=dict(
        type=VisionLanguageDataset, data_path=f"{data_root}/train.json", image_folder=data_root, max_length=256
    ),
    sampler=dict(type=LengthGroupedSampler),
    collate_fn=dict(type=pad_collate),
)

# ---------------- schedule and runtime ----------------
precision = "fp32"
optim_wrapper.optimizer.update(lr=lr, weight_decay=0.0, fused=True)
lr_schedule.update(warmup_ratio=0.04, min_lr_ratio=0.0)
train_cfg.update(max_iters=max_iters)
default_hooks.checkpoint.update(interval=250, max_keep_ckpts=2)
default_hooks.logger.update(interval=10)
custom_hooks.append(dict(type=MultipleChoiceEvalHook, data_path=f"{data_root}/dev.tsv"))
# watch the answers form: two training pictures, free-form questions the demo teaches (demo_task.FREE_QUESTIONS)
custom_hooks.append(
    dict(
        type=SampleAnswersHook,
        prompts=["What colour is the shape?", "What shape do you see?"],
        images=[f"{data_root}/images/000000.png", f"{data_root}/images/000001.png"],
        every_n_iters=175,
        max_new_tokens=16,
    )
)
randomness.update(seed=seed)
