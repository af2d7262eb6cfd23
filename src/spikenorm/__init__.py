"""spikenorm."""
