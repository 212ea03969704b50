"""univg: reasoning-guided universal visual grounding (UniVG-R1) as a PyTorch Lightning suite."""

from univg.core.console import quiet_console

quiet_console()  # no Lightning advertisements on the console (see univg.core.console)
