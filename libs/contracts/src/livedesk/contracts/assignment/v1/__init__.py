"""Generated from proto/livedesk/assignment/v1 by tools/gen_proto.py. Do not edit."""
