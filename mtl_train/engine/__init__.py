"""The training engine: device/precision set-up, the loop, progress display and run outputs."""
