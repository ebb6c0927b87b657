"""Classify MNIST images with a model saved by the trainer, using only numpy
and the safetensors package: the feedforward of network.py in ten lines.

Usage: python3 predict.py MODEL PIXELS  (PIXELS: raw u8, 784 bytes per image)
Prints one predicted digit per image, one per line.
"""
import sys

import numpy as np
from safetensors.numpy import load_file

# --- the ten lines shown in the README ---
model = load_file(sys.argv[1])  # w0, b0, w1, b1, ...: w{l} has shape [out, in]
layers = len(model) // 2
def feedforward(a):  # a: (784, n) floats in [0, 1]
    for l in range(layers):
        a = 1.0 / (1.0 + np.exp(-(model[f"w{l}"] @ a + model[f"b{l}"][:, None])))
    return a
pixels = np.fromfile(sys.argv[2], dtype=np.uint8).reshape(-1, 784)
x = pixels.T.astype(np.float32) / 255.0
predictions = feedforward(x).argmax(axis=0)
# --- end ---
print("\n".join(str(d) for d in predictions))
