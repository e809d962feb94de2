"""Frozen-phase training: the Keras transfer-learning guide against `transfer train`, same backbone, head, size, epochs.

Baseline (https://keras.io/guides/transfer_learning/): image_dataset_from_directory ->
frozen base called with training=False -> global average pooling -> dropout ->
Dense, model.fit for E epochs; it runs the frozen backbone on every image in
every epoch. Candidate: transfer.train with --weights none --augment none
--fine-tune-epochs 0 (feature caching on by default), first with an empty cache
(cold: the audit decodes every image, features computed once) and then again
(warm: the next run on the same data). The baseline's frozen base gets the
candidate's weights, so both heads see the same features.

    python benchmarks/bench_train.py --train-per-class 300 --val-per-class 150 --epochs 10
"""

from __future__ import annotations

import os
import tempfile

from _common import parser, subset, timed_cpu


def run_transfer(data: str, args, work: str, name: str):
    from transfer.config import TrainConfig
    from transfer.training import train

    config = TrainConfig(data_dir=data, backbone=args.backbone, weights="none", image_size=args.image_size,
                         epochs=args.epochs, fine_tune_epochs=0, augment="none", batch_size=args.batch_size,
                         output_dir=os.path.join(work, "models"), name=name, cache_dir=os.path.join(work, "cache"),
                         restore_best=False, patience=10 * args.epochs, verbose=0)  # all E epochs, like the guide
    return timed_cpu(train, config)


def run_keras_guide(data: str, args, backbone_weights, preprocessing: str):
    import keras

    from transfer.layers import Preprocess

    def build_and_fit():
        size = (args.image_size, args.image_size)
        train_ds = keras.utils.image_dataset_from_directory(os.path.join(data, "train"), image_size=size,
                                                            batch_size=args.batch_size, seed=1, verbose=False)
        val_ds = keras.utils.image_dataset_from_directory(os.path.join(data, "validation"), image_size=size,
                                                          batch_size=args.batch_size, shuffle=False, verbose=False)
        base = getattr(keras.applications, args.keras_class)(include_top=False, weights=None, input_shape=size + (3,))
        base.set_weights(backbone_weights)
        base.trainable = False
        inputs = keras.Input(size + (3,))
        x = Preprocess(preprocessing)(inputs)  # the same maths as keras.applications' preprocess_input
        x = base(x, training=False)
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dropout(0.2)(x)
        outputs = keras.layers.Dense(len(train_ds.class_names), activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model.fit(train_ds.prefetch(2), validation_data=val_ds.prefetch(2), epochs=args.epochs, verbose=0)

    history, seconds, cpu = timed_cpu(build_and_fit)
    return history.history["val_accuracy"][-1], seconds, cpu


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=150)
    p.add_argument("--keras-class", default="MobileNetV2", help="keras.applications class of --backbone")
    args = p.parse_args()
    with subset(args.data, {"train": args.train_per_class, "validation": args.val_per_class}) as data, \
            tempfile.TemporaryDirectory(prefix="transfer-bench-work-") as work:
        cold, cold_s, cold_cpu = run_transfer(data, args, work, "cold")
        _, warm_s, warm_cpu = run_transfer(data, args, work, "warm")
        from transfer import backbones
        from transfer.heads import backbone_of

        weights = backbone_of(cold.model).get_weights()
        preprocessing = backbones.get(args.backbone).preprocessing
        guide_acc, guide_s, guide_cpu = run_keras_guide(data, args, weights, preprocessing)
    seen = 2 * args.train_per_class * args.epochs  # training images seen: images/s = seen / seconds
    print(f"bench_train {args.backbone} {args.image_size}px {args.epochs} epochs, "
          f"{2 * args.train_per_class}+{2 * args.val_per_class} images: "
          f"keras-guide {guide_s:.1f} s, cpu {guide_cpu:.0f} s ({seen / guide_s:.0f} img/s, val acc {guide_acc:.3f}) | "
          f"transfer cold {cold_s:.1f} s, cpu {cold_cpu:.0f} s ({seen / cold_s:.0f} img/s, "
          f"val acc {cold.metrics['val']['accuracy']:.3f}) x{guide_s / cold_s:.1f} wall, "
          f"x{guide_cpu / cold_cpu:.1f} cpu | "
          f"warm {warm_s:.1f} s, cpu {warm_cpu:.0f} s x{guide_s / warm_s:.1f} wall, x{guide_cpu / warm_cpu:.1f} cpu")


if __name__ == "__main__":
    main()
