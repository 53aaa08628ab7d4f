"""halotrans: 3D vision transformers for cosmology.

Two workflows share one ViT stack, one DeepSpeed trainer and one set of launchers:
proto-halo segmentation (``vipr``/``copra``) and SKATR (JEPA on 21cm light cones).
Data flows ``sims -> fields -> data -> models/train -> eval``.
"""

__version__ = "0.1.0"
