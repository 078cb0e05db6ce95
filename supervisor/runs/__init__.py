"""Run execution on a worker: claim, sandbox, socket, chain, finish."""
