"""actorcast actors."""
