"""What the tests, the benchmarks and ``fetchq demo`` fetch from: not used in production."""
