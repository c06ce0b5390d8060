"""The flag a multi-pass training step sets around its update.

Kept here until `keras_bayes.training` carries the step contract itself.
"""

import contextlib


class PassStepContext:
    """The flag `keras_bayes.training.TwoPassModel` sets around its step.

    Optimizers that need more than the one gradient Keras' own training step
    gives (SAM, bSAM, SOBA with `mc_samples` > 1) refuse `apply` outside
    `two_pass_step()`, so that without the wrapper they raise instead of
    silently training something else.
    """

    _two_pass_active = False

    @contextlib.contextmanager
    def two_pass_step(self):
        """Context in which `apply` is allowed (entered by `TwoPassModel`).

        It is a Python flag, set while the training step is traced or run.
        Enter it yourself only if you write your own multi-pass step.
        """
        previous = self._two_pass_active
        self._two_pass_active = True
        try:
            yield
        finally:
            self._two_pass_active = previous
