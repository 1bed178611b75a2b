"""taps."""
