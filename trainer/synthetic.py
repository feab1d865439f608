"""Small synthetic datasets, generated on the spot from a seed (nothing is downloaded).

    x, y = regression(num_samples=1000, num_features=8, seed=0)
    y = x W + 0.3 * noise,  W ~ N(0, 1)

    x, labels = classification(num_samples=1000, num_features=8, num_classes=3)
    labels = argmax(x V + 0.5 * noise)
"""

import numpy as np


def regression(num_samples=1000, num_features=8, noise=0.3, seed=0):
  """(x, y) float32 with y of shape (num_samples, 1)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_samples, num_features)).astype(np.float32)
  w = rng.normal(size=(num_features, 1)).astype(np.float32)
  y = x @ w + noise * rng.normal(size=(num_samples, 1)).astype(np.float32)
  return x, y.astype(np.float32)


def classification(num_samples=1000, num_features=8, num_classes=3, noise=0.5, seed=0):
  """(x, labels) with int32 labels of shape (num_samples,) in [0, num_classes)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_samples, num_features)).astype(np.float32)
  v = rng.normal(size=(num_features, num_classes)).astype(np.float32)
  scores = x @ v + noise * rng.normal(size=(num_samples, num_classes))
  return x, np.argmax(scores, axis=-1).astype(np.int32)
