"""3D representations: name -> class. Each class has a nested ``Config`` dataclass, a
``from_config(cfg, seed)`` constructor, and the calls the system makes: ``render(cameras,
background, generator=None) -> RenderOutput``, ``optimizers()``, ``regularisers(out, step)``,
``pre_backward(step, optimizers)``, ``post_step(step, out, optimizers)``, ``load_weights(state)``.
Dynamic ones (4D) also render at ``Cameras.time`` and give a static snapshot ``at_time(t)``.

Capabilities are declared as class attributes, never probed with hasattr/isinstance:
``dynamic`` (renders at ``Cameras.time``, has ``at_time``), ``meshed_as`` ("triangles": its own
mesh; "isosurface": mesh export extracts the isosurface of ``density_grid``), ``has_splats``
(3D Gaussians that the splat format writes)."""

from threedgen.representations.dynamic_gaussians import DynamicGaussians
from threedgen.representations.gaussians import Gaussians
from threedgen.representations.mesh import Mesh
from threedgen.representations.nerf import NeRF
from threedgen.representations.triplane import Triplane

REPRESENTATIONS = {"gaussians": Gaussians, "mesh": Mesh, "nerf": NeRF, "triplane": Triplane,
                   "dynamic_gaussians": DynamicGaussians}


def build_representation(cfg, seed: int = 0):
    return REPRESENTATIONS[cfg.name].from_config(cfg, seed=seed)
