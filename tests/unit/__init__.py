"""marfleet tests."""
