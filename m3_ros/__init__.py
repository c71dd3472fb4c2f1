"""m3_ros: spatial multimodal memory (M3) for a legged robot with an arm.

The generated interfaces (``m3_ros.msg``, ``m3_ros.srv``) and the hand-written
sources may live in two directories (the venv's site-packages and the source
tree); ``extend_path`` lets one ``import m3_ros`` see both.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
