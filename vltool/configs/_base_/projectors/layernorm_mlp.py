# LayerNorm over the vision features, then Linear -> GELU -> Linear.
from vltool.model.projectors import LayerNormMLPProjector

projector = dict(type=LayerNormMLPProjector, depth=2)
