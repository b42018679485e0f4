"""Serving: the SavedModel export of an encoder, and batch embedding of users."""
