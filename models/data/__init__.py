"""The built-in synthetic talking-avatar data set (DESIGN.md "Built-in data set")."""
