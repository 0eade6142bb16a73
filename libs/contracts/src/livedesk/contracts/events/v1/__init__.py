"""Generated from proto/livedesk/events/v1 by tools/gen_proto.py. Do not edit."""
