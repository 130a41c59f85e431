"""dibigan-tf: DiBiGAN (Vec2Face) in TensorFlow 2 / Keras.

Keras is the Keras 2 line (`tf_keras`), which TensorFlow Probability 0.25 is built against and whose
optimizers, `tf.train.Checkpoint` tracking and `tf.distribute` custom loops are the long-proven path.
Import it as ``from dibigan_tf.keras_compat import keras``.
"""
__version__ = "0.1.0"
