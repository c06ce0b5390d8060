"""A small GPT-style character language model trained with SOBA and AdamW.

SOBA follows the GPT-2 recipe of Shen et al. (2024) (per-variable weight
decay, clip radius, gradient clipping, bf16 compute with float32 master
weights and posterior), AdamW the GPT-2 AdamW baseline; both learning rates
are scaled for a small model in the same proportion (see
`keras_bayes.recipes` and `docs/large_models.md`). The corpus is the text of
the Python documentation topics that ship with the standard library
(`pydoc_data.topics`, about 465 000 characters on Python 3.11): nothing is
downloaded.

    KERAS_BACKEND=jax python examples/transformer_lm.py
    KERAS_BACKEND=torch python examples/transformer_lm.py --steps 100

Prints train and validation loss (nats per character) and perplexity,
and for SOBA the validation NLL at the posterior mean, averaged over
posterior samples, and of single samples.
"""

import argparse
import math
import os
import time

import keras
import numpy as np

import keras_bayes
from keras_bayes import recipes
from keras_bayes.models import transformer_lm
from keras_bayes.predictive import average_log_probs

VALIDATION_FRACTION = 0.1


def load_corpus():
    """The Python documentation topics shipped with the standard library."""
    from pydoc_data.topics import topics

    # Sorted keys: the same text on every run of one Python version.
    return "\n\n".join(topics[key] for key in sorted(topics))


def encode(text):
    """Character ids and the vocabulary (the sorted characters)."""
    vocabulary = sorted(set(text))
    index = {char: i for i, char in enumerate(vocabulary)}
    return np.array([index[c] for c in text], dtype="int32"), vocabulary


def split(tokens, fraction=VALIDATION_FRACTION):
    """The first part trains, the held-out tail validates."""
    cut = int(len(tokens) * (1.0 - fraction))
    return tokens[:cut], tokens[cut:]


def random_windows(tokens, count, length, rng):
    """`count` random windows: inputs and next-character targets."""
    starts = rng.integers(0, len(tokens) - length - 1, size=count)
    offsets = np.arange(length + 1)
    windows = tokens[starts[:, None] + offsets]
    return windows[:, :-1], windows[:, 1:]


def tiled_windows(tokens, length, limit=None):
    """Non-overlapping windows covering `tokens` (up to `limit` of them)."""
    count = (len(tokens) - 1) // length
    if limit is not None:
        count = min(count, limit)
    x = tokens[:count * length].reshape(count, length)
    y = tokens[1:count * length + 1].reshape(count, length)
    return x, y


def token_nll(log_probs, targets):
    """Mean negative log-likelihood (nats) of `targets` under log_probs."""
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)
    return float(-np.mean(picked))


def log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    return logits - peak - np.log(np.exp(logits - peak).sum(-1,
                                                             keepdims=True))


def build_model(args, vocab_size, seed):
    return transformer_lm(
        vocab_size, args.sequence_length, num_layers=args.layers,
        num_heads=args.heads, hidden_dim=args.hidden_dim, seed=seed)


def train(name, optimizer, args, vocab_size, data, callbacks=()):
    """Fits a fresh model (same initial weights for every optimizer)."""
    x, y, x_val, y_val = data
    model = build_model(args, vocab_size, seed=args.seed)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    chunks = max(1, args.steps // args.log_every)
    start = time.perf_counter()
    history = model.fit(
        x, y, batch_size=args.batch_size, epochs=chunks,
        steps_per_epoch=args.steps // chunks, shuffle=False,
        validation_data=(x_val, y_val), callbacks=list(callbacks),
        verbose=0)
    seconds = time.perf_counter() - start
    steps_done = (args.steps // chunks) * chunks
    for chunk, (loss, val_loss) in enumerate(zip(
            history.history["loss"], history.history["val_loss"])):
        print(f"{name:6s} step {(chunk + 1) * steps_done // chunks:5d}  "
              f"train {loss:.3f}  val {val_loss:.3f} nats/char")
    return model, seconds


def evaluate(model, x, y, batch_size):
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return token_nll(log_softmax(logits), y)


def posterior_nlls(model, x, y, num_samples, seed, batch_size):
    """Validation NLL averaged over posterior samples, and of each one."""
    predictive = keras_bayes.Predictive(
        model, num_samples=num_samples, from_logits=True, seed=seed,
        batch_size=batch_size)
    log_probs = predictive.predict_log_samples(x)   # (S, n, T, vocab)
    averaged = token_nll(average_log_probs(log_probs), y)
    single = [token_nll(sample, y) for sample in log_probs]
    return averaged, single


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--soba-lr", type=float, default=1500.0,
                        help="peak SOBA learning rate α (GPT-2 small: 300)")
    parser.add_argument("--adamw-lr", type=float, default=3e-3,
                        help="peak AdamW learning rate (GPT-2 small: 6e-4)")
    parser.add_argument("--soba-beta2", type=float, default=0.99999,
                        help="SOBA's β2 (the recipe's 0.99999)")
    parser.add_argument("--ess", type=float, default=None,
                        help="SOBA's ess λ (default: training characters)")
    parser.add_argument("--posterior-samples", type=int, default=8)
    parser.add_argument("--val-windows", type=int, default=256,
                        help="validation windows (of sequence-length chars)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--precision", default="mixed_bfloat16",
                        choices=["mixed_bfloat16", "float32"])
    parser.add_argument("--train-chars", type=int, default=None,
                        help="use only the first N training characters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-adamw", action="store_true")
    return parser.parse_args()


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_dtype_policy(args.precision)
    tokens, vocabulary = encode(load_corpus())
    train_tokens, val_tokens = split(tokens)
    train_tokens = train_tokens[:args.train_chars]
    rng = np.random.default_rng(args.seed)
    x, y = random_windows(train_tokens, args.steps * args.batch_size,
                          args.sequence_length, rng)
    x_val, y_val = tiled_windows(val_tokens, args.sequence_length,
                                 limit=args.val_windows)
    # A fixed sample of training windows to report the train loss at the
    # final weights (the fit log averages the loss over the run).
    x_fit, y_fit = random_windows(train_tokens, args.val_windows,
                                  args.sequence_length, rng)
    data = (x, y, x_val, y_val)
    vocab_size = len(vocabulary)
    print(f"backend {keras.backend.backend()}, policy {args.precision}, "
          f"{len(train_tokens)} train / {len(val_tokens)} val characters, "
          f"vocabulary {vocab_size} (uniform: {math.log(vocab_size):.3f} "
          f"nats/char), {args.steps} steps of {args.batch_size}×"
          f"{args.sequence_length}, CPU threads {os.cpu_count()}")

    print("(train: mean loss over the last steps, at the sampled weights "
          "for SOBA; val: at the posterior mean)")
    soba = recipes.soba_gpt2_recipe(
        train_tokens=args.ess or len(train_tokens), total_steps=args.steps,
        learning_rate=args.soba_lr, beta2=args.soba_beta2, seed=args.seed)
    model, soba_seconds = train(
        "SOBA", soba, args, vocab_size, data,
        callbacks=[keras_bayes.callbacks.SwapMeanWeights()])
    print(f"parameters {model.count_params()}")
    rows = []
    # After `fit` the model holds the posterior mean.
    soba_train = evaluate(model, x_fit, y_fit, args.batch_size)
    soba_val = evaluate(model, x_val, y_val, args.batch_size)
    averaged, single = posterior_nlls(model, x_val, y_val,
                                      args.posterior_samples, args.seed,
                                      args.batch_size)
    rows.append(("SOBA, posterior mean", soba_train, soba_val, soba_seconds))
    rows.append((f"SOBA, {args.posterior_samples}-sample average", None,
                 averaged, None))
    rows.append(("SOBA, single sample (mean of S)", None,
                 float(np.mean(single)), None))

    if not args.skip_adamw:
        adamw = recipes.adamw_gpt2_recipe(total_steps=args.steps,
                                          learning_rate=args.adamw_lr)
        model, adamw_seconds = train("AdamW", adamw, args, vocab_size, data)
        rows.append(("AdamW", evaluate(model, x_fit, y_fit, args.batch_size),
                     evaluate(model, x_val, y_val, args.batch_size),
                     adamw_seconds))

    print()
    print(f"{'':34s}{'train':>8s}{'val':>8s}{'val ppl':>9s}{'fit s':>8s}")
    for label, train_nll, val_nll, seconds in rows:
        train_text = "" if train_nll is None else f"{train_nll:.3f}"
        seconds_text = "" if seconds is None else f"{seconds:.0f}"
        print(f"{label:34s}{train_text:>8s}{val_nll:8.3f}"
              f"{math.exp(val_nll):9.2f}{seconds_text:>8s}")
    keras.mixed_precision.set_dtype_policy("float32")


if __name__ == "__main__":
    main()
