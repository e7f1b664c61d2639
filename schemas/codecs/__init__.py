"""Tensor payload codecs, one module each; ``schemas/codec.py`` is the entry point that picks one.

``names`` is torch-free so that message validation can name the codecs without importing torch.
"""
