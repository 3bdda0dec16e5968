"""The vision-language model: vision encoder, projector, LLM, and the builders that assemble them."""
