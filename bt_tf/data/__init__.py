"""Reading the preprocessed artifacts: tf.data batches, views (augmentations), embeddings."""
