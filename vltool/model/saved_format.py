"""File and folder names of the model directories vltool writes and reads: one place for ``convert`` and ``infer``.

``vltool convert pth_to_hf`` writes them (:mod:`vltool.convert`); ``vltool chat``, ``mmbench`` and
``eval`` read them (:mod:`vltool.infer`). Neither package imports the other for these names.

The ``vltool`` format::

    vltool_model.json      the manifest (MANIFEST): parts, template, image token, feature layer, aspect
    llm/                   a Hugging Face causal LM            (or llm_adapter/ + a named base)
    vision_encoder/        the vision encoder, as ENCODER_KINDS says (or vision_encoder_adapter/ + base)
    projector/             config.json (class and sizes) + model.safetensors
    tokenizer/             with the image token
    image_processor/       the encoder's image processor

The ``huggingface`` format is transformers' LLaVA layout plus ``vltool_template.json`` (TEMPLATE_FILE).
"""

MANIFEST = "vltool_model.json"
"""The vltool format's manifest: its presence marks a vltool-format directory."""

FORMAT_VERSION = 1
"""The manifest's ``format_version``."""

LLM_FOLDER = "llm"
VISION_ENCODER_FOLDER = "vision_encoder"
PROJECTOR_FOLDER = "projector"
TOKENIZER_FOLDER = "tokenizer"
IMAGE_PROCESSOR_FOLDER = "image_processor"
ADAPTER_SUFFIX = "_adapter"
"""A part saved as a PEFT adapter goes to ``<folder>_adapter`` (``llm_adapter/``) instead of ``<folder>/``."""

ENCODER_CLIP = "clip"
"""``VisionEncoder`` around a transformers CLIP/SigLIP vision model (manifests without ``kind`` are this)."""
ENCODER_QWEN_VL = "qwen_vl_visual"
"""``QwenVLVisualEncoder``: ``config.json`` (its ``visual`` block) and ``transformer.visual.*`` tensors."""
ENCODER_BLIP2 = "blip2_qformer"
"""``Blip2QFormerEncoder``: BLIP-2's composite ``config.json``; ``vision_model.*``, ``qformer.*``, ``query_tokens``."""
ENCODER_KINDS = (ENCODER_CLIP, ENCODER_QWEN_VL, ENCODER_BLIP2)
"""The manifest's ``vision_encoder.kind``: which class rebuilds the encoder from its folder."""

PROJECTOR_CONFIG = "config.json"
"""In the projector folder: the projector's class (``type``) and constructor arguments."""

PROJECTOR_WEIGHTS = "model.safetensors"
"""In the projector folder: its weights."""

TEMPLATE_FILE = "vltool_template.json"
"""In a ``huggingface`` format directory: vltool's prompt template, so vltool's tools prompt the export alike."""
