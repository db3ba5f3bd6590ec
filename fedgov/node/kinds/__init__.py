"""Node-side handlers, one module per job kind."""
