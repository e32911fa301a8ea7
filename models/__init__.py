"""actorcast models: pure PyTorch (no Ray, no network)."""
