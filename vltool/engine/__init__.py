"""Training on mmengine: the runner built from a config, hooks, the trainable-model wrapper."""
