# Qwen-VL's cross-attention resampler: 256 learnable queries with 2-D sin-cos positions.
from vltool.model.projectors import ResamplerProjector

projector = dict(type=ResamplerProjector, num_queries=256, num_heads=16)
