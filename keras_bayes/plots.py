"""Figures of calibration and predictive uncertainty (needs matplotlib).

Every function returns a `matplotlib.figure.Figure`; save it with
`fig.savefig("name.png")`. Install the extra with
`pip install keras-bayes[docs]`.
"""

import numpy as np

from keras_bayes.metrics import calibration


def pyplot():
    """`matplotlib.pyplot`, set to the non-interactive "Agg" backend unless
    one was chosen already; `ImportError` with the install command if
    matplotlib is missing. For figures of your own next to these.

    Returns:
        The `matplotlib.pyplot` module.

    Example:

    ```python
    from keras_bayes import plots

    plt = plots.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], "k--")
    fig.savefig("diagonal.png")
    plt.close(fig)
    ```
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the env
        raise ImportError(
            "keras_bayes.plots needs matplotlib: pip install matplotlib"
        ) from error
    return plt


def reliability_diagram(labels, probs_by_name, num_bins=15, title=None):
    """Accuracy against confidence per equal-width bin, one panel per model.

    Args:
        labels: integer labels, shape (n,).
        probs_by_name: dict name -> probabilities (n, k), or one array.
        num_bins: number of equal-width confidence bins.
        title: optional figure title.

    Returns:
        A `matplotlib.figure.Figure`.

    Each panel shows the per-bin accuracy as bars, the gap to the diagonal
    (perfect calibration), the fraction of examples per bin, and the ECE.

    Example: an overconfident and a calibrated model on the same labels.

    ```python
    import numpy as np
    from keras_bayes import plots

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=500)
    confidence = rng.uniform(0.5, 1.0, size=500)
    correct = rng.uniform(size=500) < confidence      # calibrated
    predicted = np.where(correct, labels, 1 - labels)
    calibrated = np.where(predicted[:, None] == [0, 1], confidence[:, None],
                          1 - confidence[:, None])
    overconfident = np.where(calibrated > 0.5, 0.99, 0.01)
    fig = plots.reliability_diagram(
        labels, {"calibrated": calibrated, "overconfident": overconfident},
        num_bins=10)
    fig.savefig("reliability.png")
    ```
    """
    plt = pyplot()
    if not isinstance(probs_by_name, dict):
        probs_by_name = {"model": probs_by_name}
    fig, axes = plt.subplots(1, len(probs_by_name),
                             figsize=(3.6 * len(probs_by_name), 3.6),
                             squeeze=False)
    for ax, (name, probs) in zip(axes[0], probs_by_name.items()):
        bins = calibration.calibration_bins(labels, probs, num_bins)
        edges = bins["edges"]
        centers = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        filled = bins["counts"] > 0
        ax.bar(centers[filled], bins["accuracy"][filled], width=width,
               edgecolor="black", color="tab:blue", label="accuracy")
        low = np.minimum(bins["accuracy"], bins["confidence"])[filled]
        gap = np.abs(bins["confidence"] - bins["accuracy"])[filled]
        ax.bar(centers[filled], gap, bottom=low, width=width, fill=False,
               hatch="///", edgecolor="tab:red", lw=0, label="gap")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        share = bins["counts"] / max(bins["counts"].sum(), 1)
        ax.step(edges[1:], share, where="pre", color="gray", lw=1,
                label="fraction")
        ece = calibration.expected_calibration_error(labels, probs, num_bins)
        ax.set_title(f"{name}\nECE {ece:.4f}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def uncertainty_map(predict_proba_by_name, x, y, resolution=150,
                    margin=1.0, title=None):
    """Predictive entropy over a 2-D input plane, one panel per model.

    Args:
        predict_proba_by_name: dict name -> function mapping inputs (m, 2)
            to probabilities (m, k).
        x: training inputs (n, 2), drawn on top; y: their labels.
        resolution: grid points per axis.
        margin: how far the grid extends beyond the data.
        title: optional figure title.

    Returns:
        A `matplotlib.figure.Figure`.

    Bright regions are uncertain (high entropy); a Bayesian model should be
    bright away from the data, not only on the decision boundary.

    Example, with two hand-written predictors in place of models (a
    model's would be `keras_bayes.Predictive(model, ...).predict`):

    ```python
    import numpy as np
    from keras_bayes import plots

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    y = (x[:, 0] > 0).astype(int)

    def sigmoid_of(scale):
        def predict_proba(points):
            p = 1 / (1 + np.exp(-scale * points[:, 0]))
            return np.stack([1 - p, p], axis=1)
        return predict_proba

    fig = plots.uncertainty_map(
        {"sharp": sigmoid_of(10.0), "smooth": sigmoid_of(1.0)}, x, y,
        resolution=40)
    fig.savefig("uncertainty.png")
    ```
    """
    plt = pyplot()
    x = np.asarray(x)
    lo, hi = x.min(axis=0) - margin, x.max(axis=0) + margin
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], resolution),
                         np.linspace(lo[1], hi[1], resolution))
    grid = np.stack([g0.ravel(), g1.ravel()], axis=1).astype("float32")
    fig, axes = plt.subplots(1, len(predict_proba_by_name),
                             figsize=(3.6 * len(predict_proba_by_name), 3.4),
                             squeeze=False)
    for ax, (name, fn) in zip(axes[0], predict_proba_by_name.items()):
        probs = np.clip(np.asarray(fn(grid), dtype=np.float64), 1e-12, 1)
        entropy = -(probs * np.log(probs)).sum(axis=1)
        image = ax.contourf(g0, g1, entropy.reshape(g0.shape), levels=20,
                            cmap="viridis", vmin=0,
                            vmax=np.log(probs.shape[1]))
        ax.scatter(x[:, 0], x[:, 1], c=y, s=6, cmap="coolwarm",
                   edgecolors="none")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), label="predictive entropy")
    if title:
        fig.suptitle(title)
    return fig


def continual_accuracy(matrix_by_name, task_names=None, title=None):
    """Test accuracy of every task after each task, one panel per method.

    Args:
        matrix_by_name: dict name -> (T, T) accuracy matrix, entry [i, j]
            the accuracy on task j after training on tasks 0..i (the matrix
            the `keras_bayes.continual` metrics take).
        task_names: optional list of T names for the legend.
        title: optional figure title.

    Returns:
        A `matplotlib.figure.Figure`.

    Example:

    ```python
    from keras_bayes import plots

    fig = plots.continual_accuracy({
        "fine-tune": [[0.99, 0.0], [0.40, 0.98]],
        "with a prior": [[0.99, 0.0], [0.90, 0.95]],
    }, task_names=["0-1", "2-3"])
    fig.savefig("continual.png")
    ```
    """
    plt = pyplot()
    names = list(matrix_by_name)
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.2),
                             squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        matrix = np.asarray(matrix_by_name[name], dtype=float)
        steps = np.arange(1, len(matrix) + 1)
        for j in range(matrix.shape[1]):
            label = task_names[j] if task_names else f"task {j + 1}"
            ax.plot(steps[j:], matrix[j:, j], marker="o", ms=3, label=label)
        average = [matrix[i, :i + 1].mean() for i in range(len(matrix))]
        ax.plot(steps, average, color="black", lw=2, ls="--",
                label="average")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("after training on task")
        ax.set_xticks(steps)
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ = ["continual_accuracy", "pyplot", "reliability_diagram",
           "uncertainty_map"]
