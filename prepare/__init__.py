"""prepare step of the kit."""
