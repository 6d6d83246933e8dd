import tomllib

import pytest

from al_loop.config import CONFIG_FILE, Config, ConfigError, load_config, open_workspace, write_config


def test_defaults_file_environment_options_in_order_of_precedence(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("[ingest]\npatch_size = 256\npatch_overlap = 16\n")
    env = {"AL_LOOP_INGEST_PATCH_OVERLAP": "32", "AL_LOOP_DATABASE_URL": "sqlite:///x.db"}
    config = load_config(tmp_path, overrides={"ingest": {"min_valid_fraction": 0.5}}, environ=env)
    assert config.ingest.patch_size == 256  # file
    assert config.ingest.patch_overlap == 32  # environment beats file
    assert config.ingest.min_valid_fraction == 0.5  # option
    assert config.database.url == "sqlite:///x.db"
    assert config.synthetic.seed == Config().synthetic.seed  # default
    config = load_config(tmp_path, overrides={"ingest": {"patch_overlap": 8}}, environ=env)
    assert config.ingest.patch_overlap == 8  # option beats environment


def test_written_file_documents_and_round_trips_every_key(tmp_path):
    config = Config()
    config.ingest.patch_size = 128
    text = write_config(tmp_path, config).read_text()
    values = tomllib.loads(text)
    assert values["ingest"]["patch_size"] == 128
    for section in ("database", "ingest", "synthetic"):
        for key in values[section]:
            assert "\n# " in text.split(f"{key} =")[0][-200:], f"{section}.{key} has no comment"
    assert load_config(tmp_path, environ={}) == config


@pytest.mark.parametrize(
    "text, message",
    [
        ("[ingest]\npatch_size = 'big'\n", "ingest.patch_size: expected int, found 'big'"),
        ("[ingest]\npatch_sise = 3\n", "unknown key ingest.patch_sise"),
        ("[nope]\nx = 1\n", "unknown section [nope]"),
        ("[ingest\n", "not valid TOML"),
        ("[ingest]\nquicklooks = 'maybe'\n", "ingest.quicklooks: expected bool"),
        ("[training]\nvalidation_routing = 'sometimes'\n", "training.validation_routing: expected one of share, train"),
        ("[backend]\nprediction_format = 'polygon'\n", "backend.prediction_format: expected one of brush, polygons"),
        ("[sampling]\nstrategy = 'smart'\n", "sampling.strategy: expected one of random, entropy"),
        ("[ingest]\npatch_size = 300\n", "ingest.patch_size 300 must be a multiple of 16 (2**model.depth"),
        ("[training]\nvalidation_fraction = 1.5\n", "training.validation_fraction must be between 0 and 1"),
    ],
)
def test_bad_configuration_names_the_file_and_key(tmp_path, text, message):
    (tmp_path / CONFIG_FILE).write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert message in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_bad_environment_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match="environment: ingest.patch_size"):
        load_config(tmp_path, environ={"AL_LOOP_INGEST_PATCH_SIZE": "1.5"})


def test_workspace_from_environment_and_relative_paths(tmp_path):
    ws = open_workspace(environ={"AL_LOOP_WORKSPACE": str(tmp_path)})
    assert ws.root == tmp_path.resolve()
    assert ws.database_url == f"sqlite:///{tmp_path.resolve() / 'al-loop.db'}"
    inside = ws.root / "scenes" / "a.tif"
    assert ws.relative(inside) == "scenes/a.tif"
    assert ws.resolve("scenes/a.tif") == inside
    assert ws.relative(tmp_path.parent / "elsewhere.tif") == str((tmp_path.parent / "elsewhere.tif").resolve())
    with pytest.raises(FileNotFoundError, match="the store records no file here: a scene ingested as slices"):
        ws.resolve(None)  # a slices scene's data_path


def test_init_sizes_a_new_workspace_for_a_compute_profile(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["init", str(tmp_path / "gpu"), "--profile", "cuda"]).exit_code == 0
    gpu = load_config(tmp_path / "gpu", environ={})
    assert (gpu.ingest.patch_size, gpu.model.depth, gpu.model.max_filters, gpu.training.crop_size) == (512, 5, 512, 256)
    assert "Sizes were set for the cuda compute profile" in (tmp_path / "gpu" / CONFIG_FILE).read_text()
    assert runner.invoke(app, ["init", str(tmp_path / "cpu"), "--profile", "cpu"]).exit_code == 0
    cpu = load_config(tmp_path / "cpu", environ={})
    for section in ("ingest", "model", "training", "sampling"):  # the defaults are the cpu profile
        assert getattr(cpu, section) == getattr(Config(), section)
    again = runner.invoke(app, ["init", str(tmp_path / "cpu"), "--profile", "cuda"])
    assert again.exit_code == 0 and "was kept" in again.output
    assert load_config(tmp_path / "cpu", environ={}).ingest.patch_size == 256
    bad = runner.invoke(app, ["init", str(tmp_path / "x"), "--profile", "tpu"])
    assert bad.exit_code == 2 and "--profile must be one of cpu, cuda, found 'tpu'" in bad.output
    assert not (tmp_path / "x").exists()


def test_status_on_a_folder_without_a_database_creates_nothing(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    (tmp_path / CONFIG_FILE).write_text("")  # a configuration, but no database beside it
    result = CliRunner().invoke(app, ["status", "-w", str(tmp_path)])
    assert result.exit_code == 2 and "no al-loop database at" in result.output and "al-loop init" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE]
