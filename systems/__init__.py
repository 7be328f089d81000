"""Lightning glue: the only package that imports pytorch_lightning."""
