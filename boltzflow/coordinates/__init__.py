"""Internal coordinates for molecules."""
