"""`WrapperModel`: the plumbing shared by keras_bayes' training wrappers."""

import keras


class WrapperModel(keras.Model):
    """A model that trains `inner` with its own `train_step`.

    The plumbing shared by `TwoPassModel` and `VOGNModel`: `call` delegates
    to the wrapped model, and the config holds it, so saving the wrapper
    saves the wrapped model, the optimizer and its state. A subclass lists
    its own constructor arguments in `wrapper_arguments` (stored as
    attributes of the same names) and overrides `train_step`.

    Example: a wrapper with one argument of its own, saved and loaded with
    the wrapped model (this one keeps Keras' `train_step`):

    ```python
    import keras
    import numpy as np
    from keras_bayes.training import WrapperModel

    @keras.saving.register_keras_serializable(package="example")
    class Tagged(WrapperModel):
        wrapper_arguments = ("tag",)

        def __init__(self, inner, tag="", **kwargs):
            super().__init__(inner, **kwargs)
            self.tag = tag

    x = np.zeros((8, 3), "float32")
    model = Tagged(keras.Sequential([keras.Input((3,)),
                                     keras.layers.Dense(1)]), tag="run 1")
    model.compile("sgd", "mse")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    model.save("tagged.keras")
    assert keras.models.load_model("tagged.keras").tag == "run 1"
    ```
    """

    wrapper_arguments = ()

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        if inner.built:
            self.built = True

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config["inner"] = keras.saving.serialize_keras_object(self.inner)
        for name in self.wrapper_arguments:
            config[name] = getattr(self, name)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner"), custom_objects=custom_objects)
        return cls(inner, **config)


__all__ = ["WrapperModel"]
