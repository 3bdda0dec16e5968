# LLaVA-Pretrain (blip_laion_cc_sbu_558k): image-caption pairs for projector alignment.
from vltool.data.collate import pad_collate
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.sampler import LengthGroupedSampler

data_root = "./data/llava_data/LLaVA-Pretrain"
train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(
        type=VisionLanguageDataset,
        data_path=f"{data_root}/blip_laion_cc_sbu_558k.json",
        image_folder=f"{data_root}/images",
        max_length=2048,
        truncation="truncate",
        image_aspect="pad",
    ),
    sampler=dict(type=LengthGroupedSampler),
    collate_fn=dict(type=pad_collate),
)
