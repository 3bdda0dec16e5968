# LLaVA-Instruct mix665k: multi-turn visual instruction data plus text-only ShareGPT.
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.packing import pack_collate
from vltool.data.sampler import LengthGroupedSampler

data_root = "./data/llava_data"
train_dataloader = dict(
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(
        type=VisionLanguageDataset,
        data_path=f"{data_root}/LLaVA-Instruct-150K/llava_v1_5_mix665k.json",
        image_folder=f"{data_root}/llava_images",
        max_length=2048,
        truncation="truncate",
        image_aspect="pad",
    ),
    sampler=dict(type=LengthGroupedSampler),
    # samples packed into one row, attention kept inside each (docs/packing.md); pad_collate pads instead
    collate_fn=dict(type=pack_collate),
)
