"""The command-line tools on top of the other layers (cass_segment)."""
