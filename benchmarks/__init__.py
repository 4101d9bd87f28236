"""Throughput benchmarks: suites (pipelines, train, engines, score) over one harness, a JSONL history
per results folder, regression compare against a baseline, history plots. See README.md here."""
