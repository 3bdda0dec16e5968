# Qwen/Qwen2.5-0.5B-Instruct with its tokenizer and the ChatML template (Qwen2.5's default system prompt).
from transformers import AutoModelForCausalLM, AutoTokenizer

llm_name_or_path = "Qwen/Qwen2.5-0.5B-Instruct"
llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=llm_name_or_path)
tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=llm_name_or_path)
template = "qwen_chat"
