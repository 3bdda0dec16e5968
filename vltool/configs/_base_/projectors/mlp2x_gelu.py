# LLaVA-1.5's projector: Linear -> GELU -> Linear.
from vltool.model.projectors import MLPProjector

projector = dict(type=MLPProjector, depth=2)
