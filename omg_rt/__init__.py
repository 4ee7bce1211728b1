"""omg-rt: the torch-free OMG-Seg runtime."""
