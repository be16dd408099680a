"""Agent demo: ReAct loop and its tools (see sandbox.py for the Python interpreter)."""
