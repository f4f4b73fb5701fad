"""submit step of the kit."""
