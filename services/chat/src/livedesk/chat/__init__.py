"""LiveDesk chat service: conversations and messages, WebSocket + REST."""
