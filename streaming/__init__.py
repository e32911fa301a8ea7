"""actorcast streaming."""
