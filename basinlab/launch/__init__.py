"""The CLI and the recipes: the only place that wires data, models, optim and eval together."""
