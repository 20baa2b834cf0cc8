"""The KFP component definitions, one module per component (each imports ``kfp.dsl``)."""
