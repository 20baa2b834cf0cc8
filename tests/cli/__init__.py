"""Tests of the kfp-serve command line."""
