"""Downstream evaluation of frozen user embeddings: linear probes with scarce labels.

One module per concept, in dependency order:

- `settings`: the probes' settings, `EvalSettings` (no TensorFlow);
- `metrics`: full-catalog ranking and classification metrics (numpy);
- `labels`: task labels derived from each user's future, and seeded label
  samples (numpy);
- `protocol`: the evaluated population and its folds (cross-fitted or
  inductive), the labelled users of a fold (numpy);
- `linear`: converged L2-regularized probes (softmax, bilinear next item) and
  their selection by cross-validation inside the labelled users (scipy);
- `probe`, `grid_fit`: the TensorFlow softmax probe (the full-softmax
  next-item variant, the tuner's objective);
- `contenders`: one model's or floor's user features and item vectors, as the
  probes take them (bag-of-items, svd, prior);
- `tasks`: the task registry (`TASKS`, `get_task`), `Units` (per-user
  scores), `ProbeContext`, `probe_contender`;
- `caching`: cache file names and atomic writes;
- `probing`: one contender through every task, fraction and seed, cached
  (`EvalPlan`, `Record`, `probe_records`);
- `intervals`: paired bootstrap intervals over users, the claim's verdict;
- `scores`: ``scores.parquet``, and the analysis of the per-user scores
  (every cell's interval, the comparisons, the claim);
- `eval_data`: the evaluated users of an artifact dir and their labels (`EvalData`);
- `embedding_cache`: frozen encoders of runs, user embeddings, their disk cache;
- `floors`: the history floors and the untrained encoders;
- `recommender`: the DE with its own towers in the SASRec protocol;
- `report`: Markdown / JSON report, plots (no TensorFlow);
- `timing`: per-stage wall and CPU time;
- `runner`: `evaluate_runs`, trained runs to report;
- `reproduction`: `reproduce`, data to the paper's comparison and ablation.

The command lines are `bt_tf.evaluate` and `bt_tf.reproduce`.
"""
