# LoRA on every linear layer of the LLM except the LM head (r=128, alpha=256 as LLaVA-1.5's LoRA run).
# To train the embeddings and LM head whole as well, add modules_to_save=["embed_tokens", "lm_head"];
# rows appended for new tokens (an LLM without a spare row for <image>) train without it.
from peft import LoraConfig

llm_lora = dict(
    type=LoraConfig, r=128, lora_alpha=256, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
)
