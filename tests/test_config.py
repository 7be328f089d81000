import pytest

from threedgen import config as C
from threedgen.schedules import value_at


def write(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


RECIPE = """
prompt: a red cube
system:
  representation: {name: nerf}
  guidance: {name: sds, guidance_scale: 5}
trainer: {max_steps: 10}
"""


def test_load_with_overrides(tmp_path):
    cfg = C.load([write(tmp_path, RECIPE)], ["prompt=a blue cone", "system.guidance.guidance_scale=30",
                                             "system.guidance.t_max={start: 0.98, end: 0.5, until: 100}"])
    assert cfg.prompt == "a blue cone" and cfg.name == "recipe"
    assert cfg.system.guidance.guidance_scale == 30.0
    assert isinstance(cfg.system.guidance.t_max, C.Ramp)
    assert value_at(cfg.system.guidance.t_max, 50) == pytest.approx(0.74)
    assert value_at(cfg.system.guidance.t_max, 500) == pytest.approx(0.5)
    assert cfg.trainer.max_steps == 10


@pytest.mark.parametrize("override, message", [
    ("system.guidance.guidence_scale=3", "system.guidance.guidence_scale: unknown key; did you mean guidance_scale?"),
    ("trainer.max_steps=abc", "trainer.max_steps: expected an integer, got 'abc'"),
    ("system.guidance.guidance_scale=high", "system.guidance.guidance_scale: expected a number, got 'high'"),
    ("system.representation.name=nerff", "system.representation.name: unknown representation 'nerff'; did you mean nerf?"),
    ("system.camera.elevation=[1,2,3]", "system.camera.elevation: expected 2 values, got 3"),
    ("trainer.maxsteps=3", "trainer.maxsteps: unknown key; did you mean max_steps?"),
    ("system.guidance.t_max={start: 1, end: 0.5, until: 0}", "system.guidance.t_max"),
])
def test_errors_name_the_path(tmp_path, override, message):
    with pytest.raises(C.ConfigError) as e:
        C.load([write(tmp_path, RECIPE)], [override])
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_missing_required_value(tmp_path):
    with pytest.raises(C.ConfigError, match=r"^prompt: missing required value"):
        C.load([write(tmp_path, RECIPE.replace("prompt: a red cube", ""))])


def test_every_recipe_validates():
    from pathlib import Path

    recipes = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert recipes
    for r in recipes:
        C.load([r], ["prompt=a red cube"])


def test_weighted_terms_skip_zero_weights_and_follow_ramps():
    from threedgen.schedules import Ramp, weighted_terms

    def boom():
        raise AssertionError("a loss with weight 0 must not be computed")

    terms = {"a": (Ramp(start=0.0, end=2.0, until=10), lambda: 3.0), "b": (0.0, boom), "c": (0.5, lambda: 4.0)}
    assert weighted_terms(0, terms) == {"c": 2.0}  # the ramp starts at 0
    assert weighted_terms(5, terms) == {"a": 3.0, "c": 2.0}


def test_base_recipe_is_merged_first(tmp_path):
    (tmp_path / "parent.yaml").write_text(RECIPE)
    child = tmp_path / "child.yaml"
    child.write_text("base: parent.yaml\nsystem:\n  guidance: {name: vsd, lora_rank: 8}\n")
    cfg = C.load([child], ["trainer.seed=3"])
    assert cfg.system.guidance.name == "vsd" and cfg.system.guidance.lora_rank == 8
    assert cfg.system.guidance.guidance_scale == 5  # inherited
    assert cfg.trainer.max_steps == 10 and cfg.trainer.seed == 3 and cfg.name == "child"


def test_base_recipe_errors(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(C.ConfigError, match="includes itself"):
        C.load([loop])
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("base: missing.yaml\n")
    with pytest.raises(C.ConfigError, match="missing.yaml: cannot read"):
        C.load([orphan])


@pytest.mark.parametrize("override, message", [
    ("system.guidance.camera_dropout=2", "camera_dropout must be in"),
    ("system.guidance.lora_rnk=2", "lora_rnk: unknown key; did you mean lora_rank"),
    ("system.prompts.perp_neg=true", None),
])
def test_guidance_and_prompt_options_are_validated(tmp_path, override, message):
    base = write(tmp_path, RECIPE.replace("name: sds, guidance_scale: 5", "name: vsd"))
    if message is None:
        assert C.load([base], [override]).system.prompts.perp_neg
    else:
        with pytest.raises(C.ConfigError, match=message):
            C.load([base], [override])
    with pytest.raises(C.ConfigError, match="perp_neg needs view-dependent"):
        C.load([base], ["system.prompts.perp_neg=true", "system.prompts.view_dependent=false"])


def test_representations_declare_their_capabilities():
    """The kinds' capabilities are declared (what export, eval and 4D validation read) and agree
    with what each class can do."""
    from threedgen.registry import REPRESENTATIONS
    from threedgen.representations.gaussians import Gaussians

    for name, cls in REPRESENTATIONS.items():
        assert cls.dynamic == hasattr(cls, "at_time"), name
        assert cls.meshed_as in ("triangles", "isosurface"), name
        assert cls.meshed_as == "triangles" or hasattr(cls, "density_grid"), name
        assert cls.has_splats == issubclass(cls, Gaussians), name
    assert [n for n, c in REPRESENTATIONS.items() if c.dynamic] == ["dynamic_gaussians"]
    assert [n for n, c in REPRESENTATIONS.items() if c.meshed_as == "triangles"] == ["mesh"]


# --- recipes by name (configs/, installed as the package data threedgen.configs) ----------------

def test_recipes_are_the_configs_folder():
    """One source of truth: the shipped recipes are the files of configs/, by their stem."""
    from tests.helpers import REPO

    files = {p.stem: p.read_text() for p in (REPO / "configs").glob("*.yaml")}
    assert {name: path.read_text() for name, path in C.recipes().items()} == files
    assert "gaussians-sds" in files


def test_recipe_by_name_equals_recipe_by_path():
    """A name loads the same config as the file's path, its ``base:`` recipe included, and names
    the run after the recipe."""
    from tests.helpers import REPO

    for name in ("gaussians-sds", "gaussians-asd", "4d-gaussians-sds"):  # the last two have a base:
        by_name = C.load([name], ["prompt=a red cube"])
        assert by_name == C.load([REPO / "configs" / f"{name}.yaml"], ["prompt=a red cube"])
        assert by_name.name == name


@pytest.mark.parametrize("name, hint", [
    ("gaussian-sds", "did you mean gaussians-sds"),
    ("nerf_sds", "did you mean nerf-sds"),
    ("zzz", "recipes: 4d-gaussians-sds, "),  # nothing close: every recipe
])
def test_unknown_recipe_name_suggests_close_ones(name, hint):
    with pytest.raises(C.ConfigError) as e:
        C.load([name], ["prompt=a red cube"])
    assert str(e.value).startswith(f"{name}: no such recipe or file; ") and hint in str(e.value)
    assert "\n" not in str(e.value)


def test_a_path_is_never_a_recipe_name(tmp_path, monkeypatch):
    """A value with a folder or a suffix is a file (a missing one says so); a file in the current
    folder named like a recipe wins over the recipe."""
    with pytest.raises(C.ConfigError, match=r"gaussians-sds\.yaml: cannot read config file"):
        C.load(["gaussians-sds.yaml"], ["prompt=a red cube"])  # no such file here
    with pytest.raises(C.ConfigError, match=r"cannot read config file"):
        C.load([tmp_path / "gaussians-sds"], ["prompt=a red cube"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gaussians-sds").write_text(RECIPE)
    assert C.load(["gaussians-sds"]).system.representation.name == "nerf"  # the local file
