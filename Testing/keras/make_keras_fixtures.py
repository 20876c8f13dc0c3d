"""Generate the Keras fixtures of Testing/test_keras_import.py with REAL Keras 2 and Keras 3.

Needs TensorFlow, which the project itself never does: install it into a separate venv, never the system Python.

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 h5py   # brings keras 3.15.1 too
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python Testing/keras/make_keras_fixtures.py

Fixtures were generated with tensorflow-cpu 2.21.0, tf-keras 2.21.0 (Keras 2) and keras 3.15.1 (Keras 3).
The seed's U-Net is rebuilt here layer by layer in the seed's creation order (each up-conv's Conv2D is created
before its UpSampling2D); biases are randomised so the test also checks the bias mapping.

Written to Testing/keras/fixtures/ (base_filters 4, 32x32 inputs unless noted):
  keras2_b4_full.hdf5       Keras 2 model.save(): full model, compiled with the legacy Adam and fit one step,
                            so it carries Adam slots (optimizer_weights/), like the seed's ModelCheckpoint file.
  keras2_b4_weights.h5      Keras 2 model.save_weights() of the same model (layer_names on the root).
  keras2_b4.npz             inputs (N, H, W, C), Keras outputs (probabilities) and penultimate features.
  keras2_b2_in3_weights.h5  Keras 2 weights of a second model: base_filters 2, 3 input channels, Conv2D layers
  keras2_b2_in3.npz         named conv_99 .. conv_77, so name order is the reverse of model order.
  keras3_b4_full.h5         Keras 3 model.save('x.h5') (legacy HDF5 layout, dataset names without ':0').
  keras3_b4.keras           Keras 3 native archive of the same model.
  keras3_b4.npz

Full width (optional, not committed: ~355 MB + 124 MB):
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python Testing/keras/make_keras_fixtures.py --full-width /tmp/keras64
    python3 Testing/keras/check_full_width_parity.py /tmp/keras64   # max abs diffs, exit 1 above 1e-5
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FIXTURES = Path(__file__).resolve().with_name("fixtures")


def build_seed_unet(keras, base_filters: int, in_channels: int, size: int, reverse_sorted_names: bool = False):
    """The seed's U-Net (5 levels, dropout 0.5 / 0.4, upsample + 2x2 conv, concatenate([skip, up])).

    Layers are created in the seed's order, so default names match a seed model built first in its session.
    ``reverse_sorted_names`` names the Conv2D layers so that sorting by name reverses the model order.
    """
    layers = keras.layers
    names = iter(f"conv_{99 - i:02d}" for i in range(23)) if reverse_sorted_names else None

    def conv(filters, kernel_size=3):
        return layers.Conv2D(filters, kernel_size, activation="relu", padding="same", kernel_initializer="he_normal",
                             name=next(names) if names else None)

    def double_conv(x, filters):
        x = conv(filters)(x)
        return conv(filters)(x)

    widths = [base_filters * m for m in (1, 2, 4, 8, 16)]
    inputs = layers.Input((size, size, in_channels))
    x, skips = inputs, []
    for level, width in enumerate(widths):
        x = double_conv(x, width)
        if level == 3:
            x = layers.Dropout(0.5)(x)
        if level == 4:
            x = layers.Dropout(0.4)(x)
        else:
            skips.append(x)
            x = layers.MaxPooling2D(pool_size=(2, 2))(x)
    for width, skip in zip(reversed(widths[:4]), reversed(skips)):
        up_conv = conv(width, 2)
        x = up_conv(layers.UpSampling2D(size=(2, 2))(x))
        x = layers.concatenate([skip, x], axis=3)
        x = double_conv(x, width)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name=next(names) if names else None)(x)
    return keras.Model(inputs, outputs)


def randomise_biases(model, rng) -> None:
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.05, size=tuple(layer.bias.shape)).astype("float32"))


def dice_loss(backend):
    def loss(y_true, y_pred):
        t, p = backend.flatten(y_true), backend.flatten(y_pred)
        return 1.0 - (2.0 * backend.sum(t * p) + 1.0) / (backend.sum(t) + backend.sum(p) + 1.0)
    return loss


def fit_one_step(model, rng, optimizer, loss) -> None:
    """One Adam step, so the optimizer owns its slots (m, v) and saves them with the model."""
    shape = (2,) + tuple(model.input_shape[1:])
    x = rng.random(shape, dtype=np.float32)
    y = (rng.random(shape[:3] + (1,)) > 0.5).astype("float32")
    model.compile(optimizer=optimizer, loss=loss)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)


def reference_outputs(keras, model, rng, count: int = 2) -> dict:
    """Fixed inputs, the model's outputs and its penultimate feature map (inference mode)."""
    inputs = rng.random((count,) + tuple(model.input_shape[1:]), dtype=np.float32)
    features_model = keras.Model(model.inputs, model.layers[-2].output)
    outputs = model.predict(inputs, verbose=0)
    features = features_model.predict(inputs, verbose=0)
    print(f"    outputs in [{outputs.min():.4f}, {outputs.max():.4f}], mean {outputs.mean():.4f}; "
          f"features max {features.max():.3f}")
    return {"inputs": inputs, "outputs": outputs, "features": features}


def describe(path: Path, model) -> None:
    convs = [layer.name for layer in model.layers if layer.weights]
    print(f"  {path.name}: {path.stat().st_size:,} bytes; {model.count_params():,} params; "
          f"Conv2D order {convs[0]} .. {convs[-1]}")


def make_keras2(out: Path, rng) -> None:
    import tf_keras as keras

    print(f"Keras 2 (tf-keras {keras.__version__})")
    keras.utils.set_random_seed(5)
    model = build_seed_unet(keras, base_filters=4, in_channels=1, size=32)
    print("  layer order:", [layer.name for layer in model.layers])
    randomise_biases(model, rng)
    # tf-keras >= 2.11 ignores lr=: the legacy Adam with learning_rate= keeps the seed's slots layout.
    fit_one_step(model, rng, keras.optimizers.legacy.Adam(learning_rate=1e-5), dice_loss(keras.backend))
    model.save(out / "keras2_b4_full.hdf5")
    model.save_weights(out / "keras2_b4_weights.h5")
    np.savez_compressed(out / "keras2_b4.npz", **reference_outputs(keras, model, rng))
    describe(out / "keras2_b4_full.hdf5", model)
    describe(out / "keras2_b4_weights.h5", model)

    rgb = build_seed_unet(keras, base_filters=2, in_channels=3, size=32, reverse_sorted_names=True)
    randomise_biases(rgb, rng)
    rgb.save_weights(out / "keras2_b2_in3_weights.h5")
    np.savez_compressed(out / "keras2_b2_in3.npz", **reference_outputs(keras, rgb, rng))
    describe(out / "keras2_b2_in3_weights.h5", rgb)


def make_keras3(out: Path, rng) -> None:
    import keras

    print(f"Keras 3 ({keras.__version__}, backend {keras.backend.backend()})")
    keras.utils.set_random_seed(7)
    model = build_seed_unet(keras, base_filters=4, in_channels=1, size=32)
    randomise_biases(model, rng)
    model.save(out / "keras3_b4_full.h5")  # uncompiled: no optimizer slots, keeps the fixture small
    model.save(out / "keras3_b4.keras")
    np.savez_compressed(out / "keras3_b4.npz", **reference_outputs(keras, model, rng))
    describe(out / "keras3_b4_full.h5", model)
    describe(out / "keras3_b4.keras", model)


def make_full_width(out: Path, rng) -> None:
    """Base 64, 256x256, compiled with the legacy Adam and fit one step: the size of the seed's checkpoint."""
    import tf_keras as keras

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(64)
    model = build_seed_unet(keras, base_filters=64, in_channels=1, size=256)
    randomise_biases(model, rng)
    fit_one_step(model, rng, keras.optimizers.legacy.Adam(learning_rate=1e-5), dice_loss(keras.backend))
    model.save(out / "keras2_b64_full.hdf5")
    model.save_weights(out / "keras2_b64_weights.h5")
    np.savez_compressed(out / "keras2_b64.npz", **reference_outputs(keras, model, rng, count=1))
    describe(out / "keras2_b64_full.hdf5", model)
    describe(out / "keras2_b64_weights.h5", model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=FIXTURES, help="fixture folder (default: %(default)s)")
    parser.add_argument("--full-width", type=Path, metavar="DIR",
                        help="only write the base-64 Keras 2 files (+ npz) to DIR, for the opt-in parity test")
    args = parser.parse_args()
    rng = np.random.default_rng(2024)
    if args.full_width:
        make_full_width(args.full_width, rng)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    make_keras2(args.out, rng)
    make_keras3(args.out, rng)
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"{args.out}: {total:,} bytes in all")


if __name__ == "__main__":
    main()
