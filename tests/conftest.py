"""Shared pytest setup: quiet TF logs, CPU only, fresh Keras state per test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
  """Each test starts with float32 policy and a clean Keras session."""
  keras.mixed_precision.set_dtype_policy("float32")
  keras.backend.clear_session()
  yield
  keras.mixed_precision.set_dtype_policy("float32")
