"""Generated from proto/livedesk/events by tools/gen_proto.py. Do not edit."""
