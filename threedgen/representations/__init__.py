"""3D representations, one file each; the name -> class table is ``threedgen.registry``.

Each class has a nested ``Config`` dataclass, a ``from_config(cfg, seed)`` constructor, and the
calls the system makes: ``render(cameras, background, generator=None) -> RenderOutput``,
``optimizers()``, ``regularisers(out, step)``, ``pre_backward(step, optimizers)``,
``post_step(step, out, optimizers)``, ``load_weights(state)``; and for normal maps
``render_with_normals(cameras, background)``, a render whose ``normal`` holds unit world normals
from the representation's own geometry. Dynamic ones (4D) also render at
``Cameras.time`` and give a static snapshot ``at_time(t)``.

Capabilities are declared as class attributes, never probed with hasattr/isinstance:
``dynamic`` (renders at ``Cameras.time``, has ``at_time``), ``meshed_as`` ("triangles": its own
mesh; "isosurface": mesh export extracts the isosurface of ``density_grid``), ``has_splats``
(3D Gaussians that the splat format writes), ``colour_field`` (a colour at any point:
``colours(points)``)."""
