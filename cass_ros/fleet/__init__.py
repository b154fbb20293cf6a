"""cass_fleet: a fleet's bags on Ray (docs/ros-interface.md, cass_fleet)."""
