"""bench step of the kit."""
