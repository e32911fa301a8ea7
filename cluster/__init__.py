"""actorcast cluster."""
