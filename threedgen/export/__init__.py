"""Export a finished run: ``export(run_dir, formats, options)``, also
``threedgen export RUN_DIR --format glb mp4 ... [key=value ...]``.

Formats (``threedgen.registry.FORMATS``: a name -> a function (Job) -> the files it wrote;
``export.formats``):

- glb, obj, ply: the textured mesh (``export.mesh``; built once per call and shared), with a
  ``mesh.json`` report beside it: how the surface was found and its measured fidelity to the
  renders (silhouette IoU, colour PSNR);
- splat: the Gaussians as a 3DGS ``.ply`` (``export.splat``);
- mp4, gif: a turntable of the representation with RGB, normal or depth shading;
- views: a multi-view set with ``transforms.json`` (``export.views``).

Files follow their tools' axes (``export.axes``): meshes y-up, splats -y up (``up=`` overrides).

A 4D run (a dynamic representation) exports sequences: ``mesh_000.glb``, ... and
``splat_000.ply``, ... at ``times`` times k / times, and ``mesh.glb``, every frame in one file
that plays them (``export.gltf``); its turntable plays the motion once while the camera orbits,
beside a fixed-view video; its view set shows time 0.

Every file is written atomically (a temporary file, then a rename); a run with no surface, a
checkpoint with non-finite values or an output folder that cannot be created fails with a
one-line error and writes no file.
"""
