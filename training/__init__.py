"""PyTorch side of omg-rt: the OMG-Seg model, data, losses, training loop and checkpoints."""
