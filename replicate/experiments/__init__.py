"""Paper tables as data: experiment specs, the run store, sweeps and their launchers."""
