"""Generated from proto/livedesk/assignment by tools/gen_proto.py. Do not edit."""
