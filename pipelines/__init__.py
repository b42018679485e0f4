"""Data: raw readers, downloads, the synthetic generator and the Beam preprocessing.

    config.py        PreprocessConfig, InteractionsConfig, flags, artifact paths (no Beam, no TF)
    preprocess.py    the command line and `preprocess()`: the pipeline of `transforms`
    transforms.py    the steps as named Beam PTransforms, with drop counters
    inputs.py        which files a run reads, their fingerprints, the version digest
    columnar.py      columnar interaction batches; the vectorized MovieLens line reader
    blocks.py        users in buckets, sorted blocks, the k-core, the vocabularies (numpy)
    examples.py      per-user tf.train.Examples, part files, shards merged from them
    metadata.py      statistics, their checks, metadata.json and schema.pbtxt
    textio.py        byte-range reading of big line files with exact line numbers
    sources.py, interactions_source.py, tfds_source.py, synthetic.py, download.py
                     the datasets: raw formats, your own data, TFDS, the generator, downloads
"""

import os

# Same "One Keras" rule as bt_tf (DESIGN.md): set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
