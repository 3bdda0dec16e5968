# Qwen/Qwen2.5-7B-Instruct with the ChatML template (Qwen2.5's default system prompt).
# The tokenizer loads from the LLM's pretrained_model_name_or_path (one key to override).
from transformers import AutoModelForCausalLM, AutoTokenizer

llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path="Qwen/Qwen2.5-7B-Instruct")
tokenizer = dict(type=AutoTokenizer.from_pretrained)
template = "qwen_chat"
