"""optsweep optimizers."""
