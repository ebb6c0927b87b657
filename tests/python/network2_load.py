"""Loads a model exported with `coordinator export --format network2-json`
using network2.py's own `load` (the lines it needs, ported verbatim from
Nielsen's network2.py: the cost classes' names, Network's constructor and
feedforward, `load`), and classifies raw MNIST pixels with it in float64.

Usage: python3 network2_load.py MODEL.json PIXELS  (PIXELS: raw u8, 784 bytes per image)
Prints one predicted digit per image, one per line.
"""
import json
import sys

import numpy as np


#### From network2.py (only what `load` and `feedforward` touch)
class QuadraticCost(object):
    pass


class CrossEntropyCost(object):
    pass


class Network(object):
    def __init__(self, sizes, cost=CrossEntropyCost):
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.default_weight_initializer()
        self.cost = cost

    def default_weight_initializer(self):
        self.biases = [np.random.randn(y, 1) for y in self.sizes[1:]]
        self.weights = [np.random.randn(y, x)/np.sqrt(x)
                        for x, y in zip(self.sizes[:-1], self.sizes[1:])]

    def feedforward(self, a):
        """Return the output of the network if ``a`` is input."""
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a)+b)
        return a


def load(filename):
    """Load a neural network from the file ``filename``.  Returns an
    instance of Network.
    """
    f = open(filename, "r")
    data = json.load(f)
    f.close()
    cost = getattr(sys.modules[__name__], data["cost"])
    net = Network(data["sizes"], cost=cost)
    net.weights = [np.array(w) for w in data["weights"]]
    net.biases = [np.array(b) for b in data["biases"]]
    return net


def sigmoid(z):
    """The sigmoid function."""
    return 1.0/(1.0+np.exp(-z))
#### End of network2.py


net = load(sys.argv[1])
pixels = np.fromfile(sys.argv[2], dtype=np.uint8).reshape(-1, 784)
print(net.cost.__name__, file=sys.stderr)
for p in pixels:
    x = p.reshape(784, 1).astype(np.float64) / 255.0  # network2's (784, 1) column
    print(int(np.argmax(net.feedforward(x))))
