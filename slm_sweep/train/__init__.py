"""Training: the LightningModule, the data module, callbacks and the fit loop of one cell."""
