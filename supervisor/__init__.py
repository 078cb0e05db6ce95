"""Stockade's supervisor: the chain every tool call crosses, the stores, the runs."""

from supervisor import asyncio_fix as _asyncio_fix

_asyncio_fix.install()  # before any task runs: Python 3.11's asyncio.wait_for loses cancels (asyncio_fix.py)
