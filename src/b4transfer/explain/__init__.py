"""Explanations: class activation maps (Grad-CAM and variants) and their overlays on the input image.

The maths (:mod:`b4transfer.explain.cam`) takes a feature map and the gradient of a class score with
respect to it, so it knows no task; a task that explains its predictions (``Task.explains``) computes the
feature map and the score, and draws the maps with :mod:`b4transfer.explain.overlay`.
"""

from b4transfer.explain.cam import DEFAULT_METHOD, METHODS, activation_map, check_method
from b4transfer.explain.overlay import input_view, overlay

__all__ = ["DEFAULT_METHOD", "METHODS", "activation_map", "check_method", "input_view", "overlay"]
