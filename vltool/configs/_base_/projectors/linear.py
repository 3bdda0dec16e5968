# One linear layer (MiniGPT4 / LLaVA-1.0).
from vltool.model.projectors import LinearProjector

projector = dict(type=LinearProjector)
