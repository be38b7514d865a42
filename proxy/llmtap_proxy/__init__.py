"""llmtap proxy: the server, the simulated backend, the CLI, bench and report commands."""
