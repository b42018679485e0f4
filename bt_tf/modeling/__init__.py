"""The models: the sequence encoder, the BT projector and loss, BT and the TFRS dual encoder."""
