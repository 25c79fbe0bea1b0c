"""Small Keras models shared by the Keras-layer tests."""

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="sensode_tests")
class TanhCell(keras.layers.Layer):
    """``cell(z, x) = tanh(z W + x U + b)`` with a small (contractive) ``W``."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.zpath = keras.layers.Dense(
            n, use_bias=False, kernel_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=2),
            dtype=self.dtype_policy,
        )
        self.xpath = keras.layers.Dense(n, dtype=self.dtype_policy)

    def build(self, z_shape, x_shape):
        self.zpath.build(z_shape)
        self.xpath.build(x_shape)

    def call(self, z, x):
        return tf.tanh(self.zpath(z) + self.xpath(x))

    def get_config(self):
        return {**super().get_config(), "n": self.n}


def mlp(width, dtype="float32", seed=0):
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input((width,), dtype=dtype),
            keras.layers.Dense(8, activation="tanh", kernel_initializer=init, bias_initializer="ones", dtype=dtype),
            keras.layers.Dense(width, kernel_initializer=init, dtype=dtype),
        ]
    )


@keras.saving.register_keras_serializable(package="sensode_tests")
class LinearCell(keras.layers.Layer):
    """``cell(z, x) = z W + x``."""

    def __init__(self, n, scale=0.2, **kwargs):
        super().__init__(**kwargs)
        self.n, self.scale = n, scale

    def build(self, z_shape, x_shape):
        init = keras.initializers.RandomNormal(stddev=self.scale / np.sqrt(self.n), seed=1)
        self.w = self.add_weight(name="w", shape=(self.n, self.n), initializer=init)

    def call(self, z, x):
        return tf.matmul(z, self.w) + x

    def get_config(self):
        return {**super().get_config(), "n": self.n, "scale": self.scale}
