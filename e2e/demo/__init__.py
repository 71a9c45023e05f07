"""`make demo`: the quickstart that shows marfleet doing its job on one machine (see story)."""
