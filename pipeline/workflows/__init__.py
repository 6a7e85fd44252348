"""Nipype workflows of ichseg (``init_*_wf`` functions)."""
