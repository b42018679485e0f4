"""Downstream evaluation of frozen user embeddings: linear probes with scarce labels.

One module per concept, in dependency order:

- `settings`: the protocol's constants and `EvalSettings` (no TensorFlow);
- `metrics`: full-catalog ranking and classification metrics (numpy);
- `labels`: task labels derived from each user's future, and the seeded
  train / selection samples (numpy);
- `probe`: the softmax and pair probes (`train_softmax_probe`, `train_pair_probe`);
- `grid_fit`: trains a probe's whole L2 grid at once (stacked weights, Adam);
- `tasks`: the task registry (`TASKS`, `get_task`), `ProbeRun`, `ResultRow`,
  `evaluate_embeddings`;
- `eval_data`: the evaluated users of an artifact dir and their labels (`EvalData`);
- `embedding_cache`: frozen encoders of runs, user embeddings, their disk cache;
- `probing`: one model's features through every task with the result cache
  (`EvalPlan`, `evaluate_features`);
- `floors`: majority, popularity, bag-of-items and untrained-encoder floors;
- `report`: aggregation, Markdown / JSON report, plots (no TensorFlow);
- `timing`: per-stage wall and CPU time;
- `runner`: `evaluate_runs`, trained runs to report;
- `recommender`: a DE run's own towers as a recommender in the SASRec protocol
  (leave-last-out, 100 sampled negatives, HR@10 / NDCG@10 with bootstrap
  intervals): `sasrec_inputs`, `sample_negatives`, `sampled_ranks`,
  `evaluate_recommender` (``bt_tf.evaluate --recommender``);
- `reproduction`: `reproduce`, data to the paper's comparison and ablation.

The command lines are `bt_tf.evaluate` and `bt_tf.reproduce`.
"""
