"""Classify MNIST images with a chapter-6 model (--net) saved by the trainer,
using only numpy, safetensors and the layout docs/using-the-model.md states:
metadata "net" names the layers; a conv layer's w{l} is [filters, channels*k*k]
(reshape to [filters, channels, k, k]: cross-correlation, valid, stride 1),
then max-pooling, bias and activation; an fc or softmax layer's input is the
pooled maps flattened as (filter, y, x); evaluation scales a dropout layer's
product by 1 - p.

Usage: python3 predict_net.py MODEL PIXELS  (PIXELS: raw u8, 784 bytes per image)
Prints one predicted digit per image, one per line.
"""
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

model = load_file(sys.argv[1])
with safe_open(sys.argv[1], "np") as f:
    meta = f.metadata()
channels, height, width = (int(d) for d in meta["input"].split(","))
ACTIVATIONS = {
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
}


def parse(text):
    """[(kind, params)] from the canonical --net text."""
    layers, tokens = [], text.split(",")
    for token in tokens:
        head, *suffixes = token.split(":")
        act = next((s for s in suffixes if s in ACTIVATIONS), "sigmoid")
        p = next((float(s[8:]) for s in suffixes if s.startswith("dropout=")), 0.0)
        if head.startswith("conv"):
            n, k = (int(v) for v in head[4:].split("x"))
            layers.append(["conv", n, k, None, act])
        elif head.startswith("pool"):
            layers[-1][3] = int(head[4:])
        elif head.startswith("fc"):
            layers.append(["fc", int(head[2:]), act, p])
        else:
            layers.append(["softmax", int(head[7:]), p])
    return layers


def conv_pool(a, w, b, k, pool, act):
    """a: (n, c, h, w) -> activation(maxpool(conv(a)) + b): (n, filters, h', w')."""
    n, c, h, wd = a.shape
    oh, ow = h - k + 1, wd - k + 1
    windows = np.lib.stride_tricks.sliding_window_view(a, (k, k), axis=(2, 3))  # (n, c, oh, ow, k, k)
    z = np.einsum("ncyxij,fcij->nfyx", windows, w.reshape(-1, c, k, k))
    z = z.reshape(n, -1, oh // pool, pool, ow // pool, pool).max(axis=(3, 5))
    return ACTIVATIONS[act](z + b[None, :, None, None])


pixels = np.fromfile(sys.argv[2], dtype=np.uint8).reshape(-1, channels, height, width)
a = pixels.astype(np.float64) / 255.0
for l, layer in enumerate(parse(meta["net"])):
    w, b = model[f"w{l}"].astype(np.float64), model[f"b{l}"].astype(np.float64)
    if layer[0] == "conv":
        a = conv_pool(a, w, b, layer[2], layer[3], layer[4])
        continue
    z = (1.0 - layer[-1]) * (a.reshape(a.shape[0], -1) @ w.T) + b
    a = ACTIVATIONS[layer[2]](z) if layer[0] == "fc" else np.exp(z - z.max(axis=1, keepdims=True))
print("\n".join(str(d) for d in a.argmax(axis=1)))
