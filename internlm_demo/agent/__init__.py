"""Agent demo: ReAct loop and its tools (see sandbox/ for the Python interpreter)."""
