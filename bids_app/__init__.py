"""ichseg.bids_app: command line, BIDS queries, derivative naming and the group level."""
