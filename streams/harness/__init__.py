"""Tools that drive a worker from outside (child processes, the demo): used by tests, benchmarks and `mmsr demo`."""
