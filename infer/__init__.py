"""infer step of the kit."""
