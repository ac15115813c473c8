"""Training: the micro-batch planner, the LightningModule, the data module, callbacks and the fit loop of one cell."""
