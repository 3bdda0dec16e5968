# Qwen/Qwen2-0.5B-Instruct (896 wide, 24 layers, tied embeddings) with ChatML and Qwen2-Instruct's own default
# system prompt, "You are a helpful assistant." (template qwen2_chat; Qwen2.5's qwen_chat has another one).
# The tokenizer loads from the LLM's pretrained_model_name_or_path (one key to override).
from transformers import AutoModelForCausalLM, AutoTokenizer

llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path="Qwen/Qwen2-0.5B-Instruct")
tokenizer = dict(type=AutoTokenizer.from_pretrained)
template = "qwen2_chat"
