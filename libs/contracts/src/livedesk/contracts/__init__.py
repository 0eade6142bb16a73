"""LiveDesk contracts: Python code generated from proto/ by tools/gen_proto.py.

Do not edit: change the proto files and run ``make proto``.
"""
