"""Plain Python/NumPy/PyTorch implementations of every kernel: the readable specification, the
fallback, and the oracle the tests compare the native kernels against."""
