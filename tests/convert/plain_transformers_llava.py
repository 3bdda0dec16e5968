"""Run an exported LLaVA with plain transformers, as a user without vltool would, and save what it computed.

Usage: python plain_transformers_llava.py MODEL_DIR IMAGE OUT.pt QUESTION
"""

import sys

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

model_dir, image, out, question = sys.argv[1:5]
processor = AutoProcessor.from_pretrained(model_dir)
model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
messages = [{"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": question}]}]
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
)
with torch.no_grad():
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
assert not [name for name in sys.modules if name.startswith("vltool")], "vltool was imported"
prompt_length = inputs["input_ids"].shape[1]
torch.save({**dict(inputs), "logits": logits, "new_tokens": generated[0, prompt_length:]}, out)
