"""Ahead-of-time build of the Triton kernels for CMake (``libomg_kernels.so``) and TensorRT."""
