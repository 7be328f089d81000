"""3D representations, one file each; the name -> class table is ``threedgen.registry``.

What a representation must provide, and what each declared capability promises, is written in
``threedgen.representations.protocol``."""
