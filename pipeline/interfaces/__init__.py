"""Nipype interfaces: small typed wrappers around the plain functions of ichseg.pipeline."""
