# The CPU demo's model on length-skewed LLaVA-like data (many short answers, some long ones),
# with samples packed into rows: what `vltool bench demo_lengths --compare-packing` measures.
# Trains like the demo (`vltool train demo_lengths`), without the held-out questions.
from mmengine.config import read_base

from vltool.data.length_task import write_length_dataset
from vltool.data.packing import pack_collate

with read_base():
    from .demo import *  # noqa: F403

data_root = "data/vltool_demo_lengths"
data_preparation = dict(type=write_length_dataset, data_root=data_root, image_size=image_size)
model.llm.config.update(max_position_embeddings=2048)
train_dataloader.dataset.update(data_path=f"{data_root}/train.json", image_folder=data_root, max_length=2048)
train_dataloader.collate_fn = dict(type=pack_collate)
custom_hooks = custom_hooks[:-2]  # without the demo's last two hooks: its held-out questions and sample answers
