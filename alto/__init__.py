"""ALTO: the E adaptor and ALTO (E applied to LAMB) as torch optimizers."""
