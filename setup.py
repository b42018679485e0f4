"""bt_tf: Barlow Twins user-sequence representations for recommendation."""

from setuptools import find_packages, setup

setup(
    name="bt_tf",
    version="0.1.0",
    description=(
        "Self-supervised user-sequence representations with Barlow Twins, "
        "compared against a TFRS dual encoder on downstream tasks."
    ),
    # bt_tf.* holds the subpackages data, modeling, training, serving (ARCHITECTURE.md).
    packages=find_packages(
        include=["bt_tf", "bt_tf.*", "pipelines", "pipelines.*", "tuning", "tuning.*"]
    ),
    python_requires=">=3.11,<3.12",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        # 0.7.6: the first release whose tfrs.tasks.Retrieval.call takes score_mask (0.7.3
        # lacks it; 0.7.4 and 0.7.5 were never published), used by bt_tf.dual_encoder.
        "tensorflow-recommenders>=0.7.6,<0.8",
        "tensorboard>=2.21,<2.22",  # tf.keras.callbacks.TensorBoard (not pulled in by TF 2.21)
        "tensorflow-datasets>=4.9.7,<5",
        "importlib-resources>=6",  # used by TFDS to build datasets, undeclared there
        "keras-tuner>=1.4.7,<1.5",
        "apache-beam>=2.60,<3",
        "tensorflow-metadata>=1.16,<2",
        "numpy>=1.26,<3",
        "pyarrow>=14",
        "scikit-learn>=1.4,<2",
        "matplotlib>=3.8,<4",
        "psutil>=5.9",
        "tensorflow-serving-api>=2.21,<2.22",  # PredictionLog protos of the export's warmup file
    ],
    extras_require={"dev": ["pytest>=8", "ruff>=0.5"]},
)
