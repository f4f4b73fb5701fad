"""train step of the kit."""
