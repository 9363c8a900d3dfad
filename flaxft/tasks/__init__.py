"""Tasks: what a model is trained to do. Each says which architecture it needs, which
batch fields are model inputs, and how the loss and metrics are computed."""
