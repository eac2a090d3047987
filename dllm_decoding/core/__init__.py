"""The core: the denoising loop, its hook specs, state, strategy config, plugin manager, the
model protocol, errors and the trace recorder. It imports nothing else of the package: no
concrete plugin, model adapter, evaluation code or argparse."""
