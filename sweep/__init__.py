"""optsweep sweep orchestration."""
