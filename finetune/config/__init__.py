"""The params.yaml schema, one module per section, and the loader a stage validates its own sections with."""

