"""The built-in synthetic talking-avatar data set (docs/ARCHITECTURE.md "Built-in data set")."""
