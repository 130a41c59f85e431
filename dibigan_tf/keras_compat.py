"""The one place that chooses the Keras implementation (Keras 2 via the `tf_keras` package)."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tf_keras as keras  # noqa: E402

__all__ = ["keras"]
