"""Evaluation: models by name, ``evaluate`` on the reference tasks, memory, metrics (AUP, the
claims), sweeps, the framework-overhead benchmark, reports and plots. Uses the public API and
the reference model; the CLI sits on top of it."""
