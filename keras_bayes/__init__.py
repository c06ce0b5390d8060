"""keras_bayes: Bayesian deep learning as a Keras 3 optimizer.

```python
import keras_bayes
model.compile(optimizer=keras_bayes.optimizers.SOBA(0.1, ess=len(x)), ...)
```
"""

from keras_bayes import callbacks
from keras_bayes import continual
from keras_bayes import distributed
from keras_bayes import layers
from keras_bayes import metrics
from keras_bayes import models
from keras_bayes import optimizers
from keras_bayes import training
from keras_bayes.posterior import Posterior
from keras_bayes.predictive import Predictive
from keras_bayes.training import TwoPassModel
from keras_bayes.version import __version__

__all__ = [
    "Posterior",
    "Predictive",
    "TwoPassModel",
    "callbacks",
    "continual",
    "distributed",
    "layers",
    "metrics",
    "models",
    "optimizers",
    "training",
    "__version__",
]
