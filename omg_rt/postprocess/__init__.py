"""Host-side post-processing of OMG-Seg outputs (numpy, OpenCV, SciPy; no torch)."""
