# LoRA on an 8-bit LLM (bitsandbytes LLM.int8), bf16 for the unquantised weights (float32 on a
# machine without CUDA); LoRA r=64 on every linear layer except the LM head.
# Apply `llm_quantization` to the llm dict: `llm=dict(**llm, **llm_quantization)`; in a config built on
# the QLoRA recipe, import this piece after the recipe so it replaces the 4-bit `llm_quantization`.
import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig

llm_quantization = dict(quantization_config=dict(type=BitsAndBytesConfig, load_in_8bit=True), dtype=torch.bfloat16)
llm_lora = dict(
    type=LoraConfig, r=64, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
)
