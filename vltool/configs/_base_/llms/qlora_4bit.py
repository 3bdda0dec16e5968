# QLoRA: the LLM loads in 4-bit NF4 with double quantisation (bitsandbytes), bf16 compute
# (float32 on a machine without CUDA); LoRA r=64 on every linear layer except the LM head.
# Apply `llm_quantization` to the llm dict: `llm=dict(**llm, **llm_quantization)`.
import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig

llm_quantization = dict(
    quantization_config=dict(
        type=BitsAndBytesConfig,
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    ),
    dtype=torch.bfloat16,
)
llm_lora = dict(
    type=LoraConfig, r=64, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
)
