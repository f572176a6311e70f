"""The NeRVI network: its configuration and presets, layers, compositing, loss and checkpoints."""
