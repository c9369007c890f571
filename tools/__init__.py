"""Developer tools for pacs-engine: synthetic data for tests and benchmarks."""
