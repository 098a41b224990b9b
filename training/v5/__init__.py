"""v5 training: a pretrained EfficientNet-Lite0 with canopy, crown-centre and crown-size heads.

Leaves the v4 modules (``training.net``, ``training.data``, ``training.augment``) untouched.
"""
