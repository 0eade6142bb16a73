"""Support code for LiveDesk's integration tests (real processes, real servers)."""
