"""posthoc.bench: data-set readers, the synthetic world, the posthoc-bench CLI, reports and speed benchmarks."""
