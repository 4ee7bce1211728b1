"""omg-rt export: checkpoint -> ONNX graphs -> verified bundle (-> TensorRT engines).

``build_bundle`` is the API; ``omg-export`` (``export.cli``) the command. The bundle and manifest
format is ``omg_rt.manifest`` (its docstring documents the layout and every manifest key).
"""

from export.bundle import PRECISIONS, TARGETS, build_bundle
from export.verify import ParityError
from omg_rt.manifest import Vocabulary

__all__ = ["build_bundle", "ParityError", "Vocabulary", "PRECISIONS", "TARGETS"]
