"""The networks of the report's benchmarks, as plain Keras functional models."""

import keras

from keras_bayes._validation import check_choice
from keras_bayes._validation import check_number
from keras_bayes._validation import check_positive_integer
from keras_bayes.layers import FilterResponseNormalization

NORMALIZATIONS = ("frn", "batchnorm")


def _normalization(kind, name):
    if kind == "frn":
        return FilterResponseNormalization(name=name)
    return keras.layers.BatchNormalization(name=name)


def _conv(filters, strides, name, kernel_size=3):
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same",
        use_bias=False, kernel_initializer="he_normal", name=name)


def _activation(kind, x):
    # FRN ends in its own thresholded linear unit (TLU), so it replaces the
    # ReLU after each normalisation; BatchNorm is followed by a ReLU.
    return x if kind == "frn" else keras.layers.ReLU()(x)


def _block(x, filters, strides, kind, name):
    shortcut = x
    y = _conv(filters, strides, f"{name}_conv1")(x)
    y = _activation(kind, _normalization(kind, f"{name}_norm1")(y))
    y = _conv(filters, 1, f"{name}_conv2")(y)
    y = _normalization(kind, f"{name}_norm2")(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = _conv(filters, strides, f"{name}_shortcut",
                         kernel_size=1)(shortcut)
        shortcut = _normalization(kind, f"{name}_shortcut_norm")(shortcut)
    y = keras.layers.Add()([y, shortcut])
    return keras.layers.ReLU()(y)


def resnet20(num_classes=10, normalization="frn", input_shape=(32, 32, 3),
             width=16):
    """ResNet-20 for 32×32 images (He et al., 2016): 3 stages × 3 blocks.

    Args:
        num_classes: int, outputs (logits).
        normalization: `"frn"` (Filter Response Normalization + TLU, the
            report's choice: no batch statistics, so two-pass and sampled
            training see no batch coupling) or `"batchnorm"`.
        input_shape: the image shape.
        width: int, filters of the first stage (16; ×2 and ×4 later).

    Returns:
        A functional `keras.Model` named `resnet20_<normalization>`,
        about 0.27 M parameters at the defaults.

    Example:

    >>> from keras_bayes.models import resnet20
    >>> model = resnet20(num_classes=10)
    >>> model.name, model.count_params(), model.output.shape
    ('resnet20_frn', 273258, (None, 10))
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    num_classes = check_positive_integer("num_classes", num_classes)
    width = check_positive_integer("width", width)
    inputs = keras.Input(input_shape)
    x = _conv(width, 1, "stem_conv")(inputs)
    x = _activation(normalization, _normalization(normalization,
                                                  "stem_norm")(x))
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _block(x, filters, strides, normalization,
                       f"stage{stage + 1}_block{block + 1}")
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet20_{normalization}")


def small_cnn(num_classes=10, input_shape=(32, 32, 3)):
    """A two-block CNN for quick CPU runs (about 0.1 M parameters).

    Args:
        num_classes: int, outputs (logits).
        input_shape: the image shape.

    Returns:
        A `keras.Sequential` named `small_cnn`.

    Example:

    >>> from keras_bayes.models import small_cnn
    >>> model = small_cnn(num_classes=3, input_shape=(16, 16, 1))
    >>> model.compute_output_shape((None, 16, 16, 1)), model.count_params()
    ((None, 3), 55939)
    """
    num_classes = check_positive_integer("num_classes", num_classes)
    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(num_classes),
    ], name="small_cnn")


@keras.saving.register_keras_serializable(package="keras_bayes")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position to a sequence.

    The GPT-2 position embedding (`wpe`): one trainable vector per position
    up to `sequence_length`, added to the token embeddings. Inputs shorter
    than `sequence_length` use the first rows. The weight is named
    `embeddings`, like `keras.layers.Embedding`'s, so name-based rules
    (weight-decay exclusion) treat both embeddings alike.

    Args:
        sequence_length: int, the longest sequence.
        embeddings_initializer: initializer of the table. Defaults to
            `RandomNormal(stddev=0.02)` (GPT-2).
        **kwargs: `name`, `dtype` and the other `Layer` arguments.

    Example:

    >>> import keras
    >>> from keras_bayes.models import PositionEmbedding
    >>> tokens = keras.Input((6,), dtype="int32")
    >>> x = keras.layers.Embedding(100, 16)(tokens)
    >>> x = PositionEmbedding(sequence_length=6)(x)
    >>> x.shape
    (None, 6, 16)
    """

    def __init__(self, sequence_length, embeddings_initializer=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = check_positive_integer(
            "sequence_length", sequence_length)
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
            or keras.initializers.RandomNormal(stddev=0.02))

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.sequence_length, input_shape[-1]),
            initializer=self.embeddings_initializer,
            name="embeddings",
        )

    def call(self, inputs):
        length = keras.ops.shape(inputs)[1]
        positions = self.embeddings[:length]
        return inputs + keras.ops.cast(positions, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "sequence_length": self.sequence_length,
            "embeddings_initializer": keras.initializers.serialize(
                self.embeddings_initializer),
        })
        return config


def _offset_seed(seed, offset):
    # A distinct seed per layer keeps a seeded model's layers from sharing
    # initial weights or dropout masks.
    return None if seed is None else seed + offset


def _gpt2_initializer(seed, offset):
    # GPT-2 draws every kernel and embedding from N(0, 0.02²).
    return keras.initializers.RandomNormal(
        stddev=0.02, seed=_offset_seed(seed, offset))


def _seed_attention_kernels(attention, seed, offset):
    """Draw each projection kernel of a built attention layer with its own
    seed (query, key, value, output), so a seeded model is reproducible."""
    if seed is None:
        return
    kernels = [w for w in attention.weights if w.name == "kernel"]
    for position, kernel in enumerate(kernels):
        initializer = _gpt2_initializer(seed, offset + 100 * position)
        kernel.assign(initializer(tuple(kernel.shape), kernel.dtype))


def _decoder_block(x, index, num_heads, hidden_dim, intermediate_dim,
                   dropout, seed):
    """A pre-LayerNorm GPT block: x + attn(ln(x)), then x + mlp(ln(x))."""
    name = f"block{index}"
    offset = 1000 * (index + 1)  # room for the seeds of one block
    h = keras.layers.LayerNormalization(epsilon=1e-5,
                                        name=f"{name}_ln1")(x)
    attention = keras.layers.MultiHeadAttention(
        num_heads, key_dim=hidden_dim // num_heads, dropout=dropout,
        # Unseeded here: the layer clones this initializer for its four
        # projections, so a seeded one would give query, key and value the
        # same kernel. `_seed_attention_kernels` seeds them afterwards.
        kernel_initializer=_gpt2_initializer(None, 0),
        seed=_offset_seed(seed, offset + 5),
        name=f"{name}_attention",
    )
    h = attention(h, h, use_causal_mask=True)
    _seed_attention_kernels(attention, seed, offset + 6)
    h = keras.layers.Dropout(dropout, seed=_offset_seed(seed, offset + 3),
                             name=f"{name}_attention_dropout")(h)
    x = keras.layers.Add(name=f"{name}_attention_residual")([x, h])
    h = keras.layers.LayerNormalization(epsilon=1e-5,
                                        name=f"{name}_ln2")(x)
    h = keras.layers.Dense(
        intermediate_dim, activation="gelu",
        kernel_initializer=_gpt2_initializer(seed, offset + 1),
        name=f"{name}_mlp_up")(h)
    h = keras.layers.Dense(
        hidden_dim, kernel_initializer=_gpt2_initializer(seed, offset + 2),
        name=f"{name}_mlp_down")(h)
    h = keras.layers.Dropout(dropout, seed=_offset_seed(seed, offset + 4),
                             name=f"{name}_mlp_dropout")(h)
    return keras.layers.Add(name=f"{name}_mlp_residual")([x, h])


def transformer_lm(vocab_size, sequence_length, num_layers=2, num_heads=4,
                   hidden_dim=64, intermediate_dim=None, dropout=0.0,
                   seed=None):
    """A GPT-style decoder-only language model (Radford et al., 2019).

    Token embedding plus a learned position embedding, `num_layers`
    pre-LayerNorm blocks (causal multi-head self-attention, then a GELU MLP,
    each inside a residual connection), a final LayerNorm and a dense head
    that returns next-token logits for every position. Written from
    `keras.layers` alone, the same architecture as Keras-Hub's `GPT2Backbone`
    with an untied head: the randomly initialised small model used to show
    that the optimizers work beyond CNNs.

    Under a mixed dtype policy (`keras.mixed_precision.set_dtype_policy(
    "mixed_bfloat16")`) the layers compute in bfloat16 and keep float32
    variables; the logits are cast to float32 by the last layer so that
    the loss is computed in float32.

    Weight names follow Keras (`kernel`, `bias`, `gamma`, `beta`,
    `embeddings`), so the GPT-2 weight-decay rule (decay kernels and
    embeddings, not biases or LayerNorm) is
    `exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])`, as
    `keras_bayes.recipes.soba_gpt2_recipe` sets it. (It cannot go by rank:
    the attention's query/key/value biases are 2-D, heads × head size.)
    Layer names say where each weight sits (`block0_attention`,
    `block0_mlp_up`, `final_ln`, `lm_head`, ...).

    Args:
        vocab_size: int, the number of tokens.
        sequence_length: int, the context length (inputs have this length).
        num_layers: int, transformer blocks. Defaults to 2.
        num_heads: int, attention heads; must divide `hidden_dim`.
            Defaults to 4.
        hidden_dim: int, the width of the residual stream. Defaults to 64.
        intermediate_dim: int, the width of the MLP. Defaults to
            4 × `hidden_dim` (GPT-2).
        dropout: float in [0, 1), after attention probabilities, the
            attention output and the MLP. Defaults to 0.
        seed: int or None, seeds the initializers and dropout.

    Returns:
        A functional `keras.Model` named `transformer_lm`, mapping int token
        ids (batch, sequence_length) to float32 logits
        (batch, sequence_length, vocab_size).

    Example: a tiny model on random tokens. Train it like any classifier
    of the last axis, e.g. `model.compile(keras_bayes.optimizers.SOBA(...),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True))` and
    `model.fit(tokens[:, :-1], tokens[:, 1:])`
    (`keras_bayes.recipes.soba_gpt2_recipe` has the settings).

    >>> from keras_bayes.models import transformer_lm
    >>> model = transformer_lm(vocab_size=50, sequence_length=8,
    ...                        num_layers=1, num_heads=2, hidden_dim=16,
    ...                        seed=0)
    >>> model.input.shape, model.output.shape   # logits at every position
    ((None, 8), (None, 8, 50))
    """
    vocab_size = check_positive_integer("vocab_size", vocab_size)
    sequence_length = check_positive_integer("sequence_length",
                                             sequence_length)
    num_layers = check_positive_integer("num_layers", num_layers)
    num_heads = check_positive_integer("num_heads", num_heads)
    hidden_dim = check_positive_integer("hidden_dim", hidden_dim)
    intermediate_dim = check_positive_integer(
        "intermediate_dim",
        4 * hidden_dim if intermediate_dim is None else intermediate_dim)
    if hidden_dim % num_heads:
        raise ValueError(
            "`num_heads` must divide `hidden_dim`. Received: "
            f"hidden_dim={hidden_dim}, num_heads={num_heads}")
    check_number("dropout", dropout, low=0.0, high=1.0, high_open=True)

    tokens = keras.Input((sequence_length,), dtype="int32",
                         name="token_ids")
    x = keras.layers.Embedding(
        vocab_size, hidden_dim,
        embeddings_initializer=_gpt2_initializer(seed, 0),
        name="token_embedding")(tokens)
    x = PositionEmbedding(
        sequence_length,
        embeddings_initializer=_gpt2_initializer(seed, 1),
        name="position_embedding")(x)
    x = keras.layers.Dropout(dropout, seed=_offset_seed(seed, 3),
                             name="embedding_dropout")(x)
    for index in range(num_layers):
        x = _decoder_block(x, index, num_heads, hidden_dim,
                           intermediate_dim, dropout, seed)
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_ln")(x)
    x = keras.layers.Dense(vocab_size,
                           kernel_initializer=_gpt2_initializer(seed, 2),
                           name="lm_head")(x)
    # The softmax cross-entropy over the vocabulary is summed in float32
    # (as autocast does in the GPT-2 recipe); a no-op under float32.
    logits = keras.layers.Activation("linear", dtype="float32",
                                     name="logits")(x)
    return keras.Model(tokens, logits, name="transformer_lm")


__all__ = ["PositionEmbedding", "resnet20", "small_cnn", "transformer_lm"]
