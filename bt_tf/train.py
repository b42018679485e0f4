"""Pretrain a user-sequence encoder: `python -m bt_tf.train`.

    python -m bt_tf.train               # synthetic default, a few minutes on a laptop CPU
    python -m bt_tf.train --dataset=ml-1m --lambd=0.005 --projector=1024-1024-1024 \\
        --augment=mask:0.3,reorder:0.3 --batch_size=256 --max_epochs=50
    python -m bt_tf.train --dataset=ml-20m --strategy=multi_worker   # TF_CONFIG set by the cluster
    python -m bt_tf.train --dataset=ml-1m --model=de                 # TFRS dual-encoder baseline

Preprocesses first when the artifacts are missing (same flags as
`pipelines.preprocess`), then runs `bt_tf.training.train`. Trains until the
validation objective (``val_loss``: the model's loss on eval users, on views
and cuts fixed by the seed) has not
improved by ``--min_delta`` (relative) for ``--early_stopping_patience``
epochs, at most ``--max_epochs`` (old name ``--epochs``); see `bt_tf.training.config`.

The run directory (`--output_dir`, default `runs/<dataset>_<model>`) holds
`config.json`, TensorBoard logs (`logs/`), `checkpoints/` (THE run's weights:
those of the epoch with the lowest val_loss, the only weights that
`metrics.json`, `export/`, `bt_tf.evaluate`, `bt_tf.export`, the tuner and
`bt_tf.reproduce` ever use), `train_state/` (the last epoch's full training
state, for resuming), `metrics.json` (``best_epoch``, ``best_val_loss``,
epochs run, optimizer steps, users seen, training seconds, why it stopped) and
the exported encoder (`export/`). Without eval users (fewer than 2) there is no
val_loss: every epoch counts as the best, so the last one is kept.

Started again with the same command, a killed run continues from its last
epoch, on exactly the batches it would have seen, with the same early-stopping
state; a finished run (stopped early, or at the cap) is not retrained (raise
`--max_epochs` to train a run that hit the cap further).
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import logging
import os
import types

from bt_tf import distribute, runs
from bt_tf.errors import UserError
from bt_tf.training import flags
from bt_tf.training.trainer import ensure_artifacts, train

PROG = "python -m bt_tf.train"


class _CallableModule(types.ModuleType):
    """This module, callable: ``bt_tf.train(config)`` is `bt_tf.training.trainer.train`.

    The package re-exports `train` (the public API), and this entry point has
    the same name; whichever ``bt_tf.train`` resolves to, calling it trains,
    and ``bt_tf.train.train`` stays the function as before.
    """

    def __call__(self, config, artifact_dir=None) -> dict:
        return train(config, artifact_dir)


sys.modules[__name__].__class__ = _CallableModule


def build_parser(argv=None):
    """The command line of `python -m bt_tf.train` (defaults of the ``--dataset`` in `argv`)."""
    return flags.build_parser(argv, prog=PROG, description=cli.summary(__doc__))


def main(argv=None) -> dict:
    """Flags -> `TrainConfig` -> preprocessing if needed -> `bt_tf.training.train`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = flags.parse(argv, description=cli.summary(__doc__), prog=PROG)
    if config.strategy == "multi_worker" and "TF_CONFIG" not in os.environ:
        raise UserError("--strategy=multi_worker needs TF_CONFIG describing the cluster")
    # The run directory's lock first: a second run into it stops before preprocessing.
    with runs.lock(config.run_dir, chief=distribute.is_chief()):
        return train(config, ensure_artifacts(config))


if __name__ == "__main__":
    cli.run_main(main)
