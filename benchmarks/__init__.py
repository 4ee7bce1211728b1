"""omg-rt benchmarks."""
