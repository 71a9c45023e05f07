"""Model storage: turning a model URI into an archive file on local disk (`marfleet fetch`)."""
