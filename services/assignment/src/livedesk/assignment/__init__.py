"""LiveDesk assignment service: the right agent for every conversation, exactly once."""
