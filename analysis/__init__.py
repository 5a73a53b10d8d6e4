"""optsweep analysis: reads the Parquet results."""
