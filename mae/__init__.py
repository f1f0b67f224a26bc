"""MAE reproduction harness: the method (model, data, recipes, checkpoints, tracking).

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (arXiv 2111.06377).
"""

__version__ = "0.1.0"
