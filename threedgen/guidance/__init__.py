"""Guidance methods: one file per method with its gradient in the docstring; the name -> class
table is ``threedgen.registry.GUIDANCE``. A new method: one file, one table entry, one recipe."""
