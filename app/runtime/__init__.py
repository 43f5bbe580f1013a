"""Where inference runs: the executor that keeps blocking work off the event loop, and the micro-batcher."""
