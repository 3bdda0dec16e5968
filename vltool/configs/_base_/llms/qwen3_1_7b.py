# Qwen/Qwen3-1.7B (the post-trained model, thinking and non-thinking in one) with the qwen3_chat template:
# ChatML with no default system prompt, and Qwen3's empty think block opening the last reply, so the model
# trains and answers in non-thinking mode (what apply_chat_template gives with enable_thinking=False).
# The tokenizer loads from the LLM's pretrained_model_name_or_path (one key to override).
from transformers import AutoModelForCausalLM, AutoTokenizer

llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path="Qwen/Qwen3-1.7B")
tokenizer = dict(type=AutoTokenizer.from_pretrained)
template = "qwen3_chat"
