"""The dashboard. Views read through selectors and write through services; every view
runs for the current team only (``common.team_view``)."""
